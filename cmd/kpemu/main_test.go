package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	kp "github.com/IBM/keyprotect-go-client"
)

// TestRunServesAndPrints starts the command, reads what it prints and uses
// it with the real client, as a user following the output would.
func TestRunServesAndPrints(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	var stderr bytes.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"-addr", "127.0.0.1:0", "-api-key", "k1-secret", "-api-key", "k2-secret", "-create-root", "decryptd-root"}, pw, &stderr)
		pw.Close()
	}()

	got := map[string]string{}
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	timeout := time.After(10 * time.Second)
	var all []string
	for ready := false; !ready; {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("command ended early: %s", stderr.String())
			}
			all = append(all, l)
			if k, v, ok := strings.Cut(l, ": "); ok {
				got[k] = v
			}
			ready = strings.HasPrefix(l, "ready")
		case <-timeout:
			t.Fatal("command printed no ready line within 10 s")
		}
	}
	for _, k := range []string{"base_url", "token_url", "instance_id", "root_key_id"} {
		if got[k] == "" {
			t.Fatalf("output lacks %s:\n%s", k, strings.Join(all, "\n"))
		}
	}
	if out := strings.Join(all, "\n"); strings.Contains(out, "k1-secret") || strings.Contains(out, "k2-secret") {
		t.Fatal("output shows an API key given on the command line")
	}

	c, err := kp.NewWithLogger(kp.ClientConfig{
		BaseURL: got["base_url"], TokenURL: got["token_url"], InstanceID: got["instance_id"], APIKey: "k2-secret",
	}, &http.Transport{}, kp.NewLogger(func(...any) {}))
	if err != nil {
		t.Fatal(err)
	}
	k, err := c.GetKeyMetadata(ctx, got["root_key_id"])
	if err != nil || k.Name != "decryptd-root" {
		t.Fatalf("root key via printed URLs: %+v, %v", k, err)
	}

	cancel()
	go func() {
		for range lines {
		}
	}()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("command did not stop after its context ended")
	}
}

func TestRunRejectsBadFlags(t *testing.T) {
	for _, args := range [][]string{{"-nope"}, {"extra"}, {"-api-key", " "}, {"-addr", "256.0.0.1:1"}} {
		var out, errb bytes.Buffer
		if code := run(context.Background(), args, &out, &errb); code == 0 {
			t.Errorf("%q: exit 0", args)
		}
	}
}

// TestHelpVersionUsage: exit codes and streams of help, version and a
// mistake.
func TestHelpVersionUsage(t *testing.T) {
	for _, tc := range []struct {
		args        []string
		code        int
		out, errOut string
	}{
		{[]string{"--help"}, 0, "Usage: kpemu [flags]", ""},
		{[]string{"-h"}, 0, "-create-root string", ""},
		{[]string{"--version"}, 0, "kpemu ", ""},
		{[]string{"--bogus"}, 2, "", "flag provided but not defined: -bogus"},
		{[]string{"extra"}, 2, "", "unexpected arguments"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := run(context.Background(), tc.args, &out, &errOut)
			if code != tc.code {
				t.Fatalf("exit %d, want %d; stdout %q stderr %q", code, tc.code, out.String(), errOut.String())
			}
			for _, s := range []struct{ name, got, want string }{{"stdout", out.String(), tc.out}, {"stderr", errOut.String(), tc.errOut}} {
				if (s.want == "" && s.got != "") || !strings.Contains(s.got, s.want) {
					t.Errorf("%s %q, want %q", s.name, s.got, s.want)
				}
			}
		})
	}
}
