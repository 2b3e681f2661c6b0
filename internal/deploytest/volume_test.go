package deploytest

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/decryptd/decryptd/internal/audit"
)

// The kubelet's fsGroup handling of a volume (Kubernetes'
// pkg/volume/volume_linux.go, SetVolumeOwnership): every file gets the
// group fsGroup and at least rwMask (read-only volumes roMask), every
// directory also setgid and x for owner and group. With
// fsGroupChangePolicy OnRootMismatch it does nothing when the volume's
// top directory already has the group, those bits and setgid.
const (
	rwMask   = 0o660
	roMask   = 0o440
	execMask = 0o110
)

func kubeletOwnership(t *testing.T, dir string, fsGroup int, policy corev1.PodFSGroupChangePolicy, readOnly bool) {
	t.Helper()
	if policy == corev1.FSGroupChangeOnRootMismatch && !requiresPermissionChange(t, dir, fsGroup, readOnly) {
		return
	}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := os.Lstat(path)
		if err != nil {
			return err
		}
		if err := os.Lchown(path, -1, fsGroup); err != nil {
			return err
		}
		if info.Mode()&os.ModeSymlink != 0 {
			return nil
		}
		mask := os.FileMode(rwMask)
		if readOnly {
			mask = roMask
		}
		if info.IsDir() {
			mask |= os.ModeSetgid | execMask
		}
		return os.Chmod(path, info.Mode()|mask)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func requiresPermissionChange(t *testing.T, dir string, fsGroup int, readOnly bool) bool {
	t.Helper()
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if int(fi.Sys().(*syscall.Stat_t).Gid) != fsGroup || !fi.IsDir() {
		return true
	}
	perms := os.FileMode(rwMask)
	if readOnly {
		perms = roMask
	}
	perms |= execMask
	if fi.Mode().Perm()&perms != perms {
		return true
	}
	return fi.Mode()&os.ModeSetgid == 0
}

// TestDataVolumeAcrossRestarts plays the data volume's life under the
// kubelet's fsGroup handling: a fresh volume is mounted, decryptd creates
// its audit log (0600) and writes to it; the pod restarts and the volume is
// mounted again. With the default change policy the second mount makes the
// log group-writable and the audit writer refuses it (the fault the
// manifests had); with OnRootMismatch, which the StatefulSet sets
// (TestPodSecurity), the log is untouched and reopens.
func TestDataVolumeAcrossRestarts(t *testing.T) {
	// fsGroup 65532 where the test may chown (root, as in CI); else the
	// test's own group, which exercises the same modes.
	fsGroup := os.Getgid()
	if os.Geteuid() == 0 {
		fsGroup = 65532
	}
	for _, c := range []struct {
		policy   corev1.PodFSGroupChangePolicy
		reopenOK bool
	}{
		{corev1.FSGroupChangeAlways, false},
		{corev1.FSGroupChangeOnRootMismatch, true},
	} {
		t.Run(string(c.policy), func(t *testing.T) {
			ctx := context.Background()
			vol := filepath.Join(t.TempDir(), "data")
			if err := os.Mkdir(vol, 0o755); err != nil {
				t.Fatal(err)
			}
			kubeletOwnership(t, vol, fsGroup, c.policy, false) // first mount
			fi, _ := os.Stat(vol)
			if fi.Mode()&os.ModeSetgid == 0 || fi.Mode().Perm()&0o070 != 0o070 {
				t.Fatalf("after the first mount the volume is %v, want group rwx and setgid", fi.Mode())
			}
			log := filepath.Join(vol, "audit.log")
			w, err := audit.Open(ctx, log, audit.WithActor("decryptd"))
			if err != nil {
				t.Fatalf("first start: %v", err)
			}
			if _, err := w.Append(ctx, audit.Event{Action: audit.ActionUnwrap, KeyID: "device/x", KeyVersion: "v1", Result: "ok"}); err != nil {
				t.Fatal(err)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			lf, _ := os.Stat(log)
			if int(lf.Sys().(*syscall.Stat_t).Gid) != fsGroup {
				t.Errorf("the audit log's group is %d, want %d (setgid directory)", lf.Sys().(*syscall.Stat_t).Gid, fsGroup)
			}

			kubeletOwnership(t, vol, fsGroup, c.policy, false) // restart: second mount
			w, err = audit.Open(ctx, log, audit.WithActor("decryptd"))
			if c.reopenOK {
				if err != nil {
					t.Fatalf("after a restart: %v", err)
				}
				w.Close()
				return
			}
			if err == nil {
				w.Close()
				t.Fatal("the default policy left the audit log as it was: this test no longer shows why OnRootMismatch")
			}
			// The writer's words for it: "lets group or others write it",
			// or "lets its group access it".
			if !strings.Contains(err.Error(), "group") {
				t.Fatalf("refused for another reason: %v", err)
			}
		})
	}
}
