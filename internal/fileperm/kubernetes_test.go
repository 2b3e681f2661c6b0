package fileperm_test

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/decryptd/decryptd/internal/audit"
	"github.com/decryptd/decryptd/internal/fileperm"
	"github.com/decryptd/decryptd/internal/sink"
)

// fsGroup is the group deploy/kubernetes runs decryptd with.
const fsGroup = 65532

// kubelet applies what the kubelet does to a volume for a pod with
// fsGroup (k8s.io/kubernetes pkg/volume/volume_linux.go,
// SetVolumeOwnership): every file and directory gets group fsGroup and the
// mode bits rw-rw---- (r--r----- on a read-only volume such as a Secret),
// directories also setgid and x for owner and group. With policy
// OnRootMismatch it does nothing when the volume's root already has the
// group and those bits (every mount after the first).
func kubelet(t *testing.T, root string, readOnly bool, policy string) {
	t.Helper()
	gid := fsGroup
	if os.Geteuid() != 0 {
		gid = os.Getgid() // only root can give a file another group
	}
	mask := fs.FileMode(0o660)
	if readOnly {
		mask = 0o440
	}
	if policy == "OnRootMismatch" {
		fi, err := os.Stat(root)
		if err != nil {
			t.Fatal(err)
		}
		want := mask | 0o110 | fs.ModeSetgid
		if gidOf(fi) == gid && fi.Mode()&want == want {
			return
		}
	}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		if err := os.Lchown(p, -1, gid); err != nil {
			return err
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			return nil
		}
		m := mask
		if fi.IsDir() {
			m |= fs.ModeSetgid | 0o110
		}
		return os.Chmod(p, fi.Mode()|m)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// openAll opens what decryptd writes on its data volume: the audit log,
// a file sink and the dead-letter file (a sink.File too).
func openAll(t *testing.T, dir string) error {
	t.Helper()
	aw, err := audit.Open(context.Background(), filepath.Join(dir, "audit.log"))
	if err != nil {
		return err
	}
	aw.Close()
	for _, name := range []string{"records.jsonl", "dead-letter.jsonl"} {
		s, err := sink.NewFile(sink.FileOptions{Name: name, Path: filepath.Join(dir, name)})
		if err != nil {
			return err
		}
		if err := s.Close(context.Background()); err != nil {
			return err
		}
	}
	return nil
}

// TestKubernetesDataVolume: decryptd's files on a data volume mounted for a
// pod with fsGroup 65532. With fsGroupChangePolicy OnRootMismatch (the
// shipped manifests) the first mount prepares the empty volume, decryptd
// creates its files 0600, and every later mount leaves them so: decryptd
// starts again and again. With the default policy (Always) the next mount
// makes them 0660 and decryptd refuses each of them, naming the file, the
// mode and fsGroupChangePolicy.
func TestKubernetesDataVolume(t *testing.T) {
	for _, policy := range []string{"OnRootMismatch", "Always"} {
		t.Run(policy, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "data")
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			kubelet(t, dir, false, policy) // first mount: an empty volume
			if err := openAll(t, dir); err != nil {
				t.Fatalf("first start: %v", err)
			}
			for _, name := range []string{"audit.log", "records.jsonl", "dead-letter.jsonl"} {
				if m := mode(t, filepath.Join(dir, name)); m != 0o600 {
					t.Fatalf("%s created %04o, want 0600", name, m)
				}
			}
			kubelet(t, dir, false, policy) // the pod restarts
			err := openAll(t, dir)
			if policy == "OnRootMismatch" {
				if err != nil {
					t.Fatalf("restart: %v", err)
				}
				if m := mode(t, filepath.Join(dir, "audit.log")); m != 0o600 {
					t.Fatalf("audit.log %04o after the restart, want 0600", m)
				}
				return
			}
			if !errors.Is(err, fileperm.ErrExposed) || !strings.Contains(err.Error(), "audit.log") ||
				!strings.Contains(err.Error(), "mode 0660") || !strings.Contains(err.Error(), "fsGroupChangePolicy: OnRootMismatch") {
				t.Fatalf("restart under Always: %v, want the audit log refused for mode 0660 with the fix", err)
			}
			// The sink and the dead-letter file are refused alike.
			for _, name := range []string{"records.jsonl", "dead-letter.jsonl"} {
				_, err := sink.NewFile(sink.FileOptions{Name: name, Path: filepath.Join(dir, name)})
				if !errors.Is(err, fileperm.ErrExposed) || !strings.Contains(err.Error(), name) {
					t.Fatalf("%s: %v, want refused", name, err)
				}
			}
		})
	}
}

// TestKubernetesSecretVolume: a Secret volume is read-only, so the kubelet
// adds r--r----- and the group fsGroup. defaultMode 0400 becomes 0440:
// accepted (only the pod's processes hold the group). Kubernetes' default
// defaultMode 0644 stays 0644: refused, every user of the node could read
// the key.
func TestKubernetesSecretVolume(t *testing.T) {
	for _, tc := range []struct {
		defaultMode fs.FileMode
		want        fs.FileMode
		ok          bool
	}{
		{0o400, 0o440, true},
		{0o440, 0o440, true},
		{0o644, 0o644, false},
	} {
		dir := filepath.Join(t.TempDir(), "tls")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, "tls.key")
		if err := os.WriteFile(p, []byte("key"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, tc.defaultMode); err != nil {
			t.Fatal(err)
		}
		kubelet(t, dir, true, "Always")
		m := mode(t, p)
		if m != tc.want {
			t.Fatalf("defaultMode %04o: kubelet made %04o, want %04o", tc.defaultMode, m, tc.want)
		}
		err := fileperm.Secret(p, m)
		if (err == nil) != tc.ok {
			t.Fatalf("defaultMode %04o (mode %04o): %v, want ok %v", tc.defaultMode, m, err, tc.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "defaultMode 0400") {
			t.Fatalf("the refusal does not name the fix: %v", err)
		}
	}
}

// TestRules: the three rules on the modes that matter.
func TestRules(t *testing.T) {
	for _, tc := range []struct {
		rule string
		mode fs.FileMode
		ok   bool
	}{
		{"private", 0o600, true}, {"private", 0o400, true}, {"private", 0o640, false}, {"private", 0o604, false}, {"private", 0o620, false},
		{"secret", 0o400, true}, {"secret", 0o440, true}, {"secret", 0o600, true}, {"secret", 0o640, true},
		{"secret", 0o660, false}, {"secret", 0o444, false}, {"secret", 0o644, false}, {"secret", 0o602, false},
		{"public", 0o644, true}, {"public", 0o664, true}, {"public", 0o666, false},
	} {
		var err error
		switch tc.rule {
		case "private":
			err = fileperm.Private("f", tc.mode)
		case "secret":
			err = fileperm.Secret("f", tc.mode)
		case "public":
			err = fileperm.Public("f", tc.mode)
		}
		if (err == nil) != tc.ok {
			t.Errorf("%s %04o: %v, want ok %v", tc.rule, tc.mode, err, tc.ok)
		}
		if err != nil && !errors.Is(err, fileperm.ErrExposed) {
			t.Errorf("%s %04o: %v does not wrap ErrExposed", tc.rule, tc.mode, err)
		}
	}
}

func mode(t *testing.T, p string) fs.FileMode {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}
