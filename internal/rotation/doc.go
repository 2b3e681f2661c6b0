// Package rotation owns fleet key rotation as a policy that runs by itself:
// the Controller (exactly one per fleet, through a Lease) decides which
// device and group keys are due (age, message count, operator request),
// creates their next version through keyops, delivers it to the devices as
// a rekey message (docs/rekey-v1.md) over MQTT at QoS 2, retries devices
// that have not adopted it, revokes superseded versions once their grace
// period has ended, and pauses a rollout whose failures or stragglers pass
// a threshold. The Tracker (in every replica) watches the decrypted
// records, detects adoption and counts messages per version.
//
// States. A rotation adds no DEK state: the new version is active from the
// start, so the backend decrypts with it before the device does, and is
// marked registry.Rotation.Pending; the version it supersedes stays active
// until adoption, then decrypt_only (messages still buffered under it keep
// decrypting) and revoked after the grace period.
//
// Adoption. The Tracker keeps in memory, per DEK version, whether it is
// pending, fed by the registry's change feed; Observe (one shard read lock,
// one map lookup, one atomic add) runs for every decrypted record, and only
// the first record under a pending version (per device, for a group key)
// queues an asynchronous, deduplicated registry update (keyops.Adopt). It
// runs after the record decrypted, so a forged message naming the new
// version cannot adopt it.
//
// Message counts are approximate: each replica counts in memory and adds
// its counts to the registry every FlushInterval; a crash loses at most
// one interval's counts of that replica. The limit (default 2^31, under the
// 2^32 random-nonce bound of NIST SP 800-38D) is far enough below the bound
// for that to be harmless.
//
// Leadership. The Controller acts only while it holds its Lease: a
// PostgreSQL advisory lock on a dedicated connection (losing the
// connection loses the lease, and the controller stops acting at once), or
// an flock on a lease file for the single-host file registry. Every step is
// idempotent and the registry is the only progress record, so a new leader
// continues where the old one stopped.
//
// Root key. With a RootState the leader also rotates the root key every
// Policy.RootMaxAge and rewraps every DEK under the new version, retrying
// failures at every scan (counted and flagged in the metrics). KMSRootState
// keeps no state of its own: the last rotation is the KMS's creation time
// of the root key's newest version (kms.RootClock: the local and Key Protect
// providers), and a rewrap is pending while any DEK in the registry is
// under an older version, so a rotation made by hand is finished too.
//
// Budget. Age-driven rotations start at most SharePerWindow of the keys per
// ShareWindow (at least one). The budget is read from the registry, where
// each rotated version records its trigger (registry.Rotation.Trigger): the
// age-started versions created within the last window are what is spent,
// so every leader, a restarted one included, sees the same budget, and the
// oldest of them leaving the window is when the next may start. Rotations
// by the message limit or an operator are not counted against it.
//
// Logs. Every rotation event is one info line (component "rotation"):
// started (trigger, reason), rekey sent, adopted, decrypt_only, revoked,
// paused (an error line) and resumed with the reason, and due keys waiting
// (why, until when), written when the reason changes.
//
// Status. Summarize computes what `dekctl rotation status` shows (keys
// current, pending, stragglers, due; versions by state; the age
// distribution of the current versions; the budget, the pause, and why
// due keys wait and until when) with the controller's own rules.
//
// Metrics (labels from fixed sets only) are listed in metrics.go. Nothing
// here logs or exports key material; rekey payloads carry DEKs only sealed.
package rotation
