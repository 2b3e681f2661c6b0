// Package fileperm owns decryptd's rules for the modes of the files it
// reads and writes, so that the daemon (the file sink, the dead-letter
// file, the audit log) and `decryptd check-config` apply the same ones.
//
// Files decryptd writes (records, dead letters, the audit log) hold
// plaintext readings or the trail of key access: decryptd creates them
// 0600, and refuses at start an existing one that its group or others can
// access (ErrExposed), naming the file, its mode and the fix. It refuses
// rather than tightening the mode itself because a mode decryptd did not
// set means something else changed it: an operator, a restore from backup,
// or a kubelet with fsGroupChangePolicy "Always" (the default), which makes
// every file of a volume group-readable and -writable at each mount.
// Undoing that silently would hide a setting that re-exposes the files at
// every restart; refusing stops the first pod of a rollout, with the fix in
// its log, before it exposes anything new. With fsGroup and
// fsGroupChangePolicy "OnRootMismatch" (deploy/kubernetes) the kubelet
// leaves the files as decryptd made them.
//
// Files decryptd reads: secrets (private keys, the Key Protect API key, a
// sink's Authorization header) may be readable by their group but by no
// one else, and writable by no one but their owner: a Kubernetes Secret
// volume with fsGroup makes its files group-readable (defaultMode 0400
// becomes 0440, group fsGroup, which only the pod's own processes hold),
// while the Secret default mode 0644 lets every user of the node read them.
// Public inputs (CA bundles, certificates) must not be writable by others.
package fileperm
