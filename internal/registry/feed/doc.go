// Package feed fans the registry's change feed out to watchers. Both registry
// backends use it behind Store.Watch.
//
// A Hub never blocks its publisher on a slow watcher: each watcher has its
// own queue, and when that queue passes its bound the queued changes are
// replaced by one ChangeReset, which tells the watcher to treat every entry
// as possibly changed. So a watcher sees every change or a Reset covering it,
// never silence. A watcher's channel is closed when its context ends or the
// Hub is closed.
package feed
