// Package fakeclock is the settable clock tests inject wherever code takes
// a Now func or a clock interface, written once: time moves only when the
// test calls Advance, so retry intervals, TTLs and budget windows are
// crossed without sleeping. A Clock is safe for concurrent use.
package fakeclock
