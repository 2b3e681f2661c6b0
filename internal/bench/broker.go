package bench

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/decryptd/decryptd/internal/pki"
)

// MosquittoBinary is where the Debian package installs the broker.
const MosquittoBinary = "/usr/sbin/mosquitto"

// BrokerOptions configure the benchmark's broker. Both drains of a run use
// one broker, so they see the same configuration.
type BrokerOptions struct {
	// Dir holds the config, certificates, persistence file and log.
	Dir string
	// MaxInflight is max_inflight_messages (the broker's per-client window
	// of unacknowledged outgoing QoS 1 messages).
	MaxInflight int
	// MaxQueued is max_queued_messages; it must exceed the backlog, or
	// Mosquitto drops the excess silently.
	MaxQueued int
	// Autosave is autosave_interval in seconds: how often Mosquitto writes
	// its whole persistence file while anything changed.
	Autosave int
	// CPUs, when set, is a taskset(1) CPU list Mosquitto runs on (e.g. "1"),
	// so that it does not share CPUs with the drainer started under
	// "taskset -c 0".
	CPUs string
}

// Broker is a Mosquitto process with one mutual-TLS listener on 127.0.0.1,
// configured as internal/testutil/mosquittotest configures the test
// brokers (persistence on, autosave 1 s, TLS 1.2 minimum, identity from
// the client certificate), but started without a testing.T.
type Broker struct {
	URL     string // ssl://127.0.0.1:PORT
	CA      *pki.CA
	Server  pki.Files
	LogFile string
	conf    string
	cpus    string
	cmd     *exec.Cmd
	exited  chan struct{}
}

// StartBroker writes the configuration and starts Mosquitto, retrying with
// a fresh port if the one picked was taken meanwhile.
func StartBroker(o BrokerOptions) (*Broker, error) {
	if _, err := os.Stat(MosquittoBinary); err != nil {
		return nil, fmt.Errorf("mosquitto not found at %s (%v): run scripts/test-deps.sh (as root) to install it", MosquittoBinary, err)
	}
	if o.MaxInflight <= 0 || o.MaxQueued <= 0 {
		return nil, errors.New("bench: broker needs MaxInflight and MaxQueued")
	}
	if err := os.MkdirAll(filepath.Join(o.Dir, "data"), 0o700); err != nil {
		return nil, err
	}
	ca, err := pki.NewCA(filepath.Join(o.Dir, "pki"), "decryptd-bench CA")
	if err != nil {
		return nil, err
	}
	srv, err := ca.IssueServer("server")
	if err != nil {
		return nil, err
	}
	b := &Broker{CA: ca, Server: srv, LogFile: filepath.Join(o.Dir, "mosquitto.log"), conf: filepath.Join(o.Dir, "mosquitto.conf"), cpus: o.CPUs}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(b.conf, []byte(brokerConfig(o, srv, port)), 0o600); err != nil {
			return nil, err
		}
		if lastErr = b.start(port); lastErr == nil {
			b.URL = fmt.Sprintf("ssl://127.0.0.1:%d", port)
			return b, nil
		}
		if !errors.Is(lastErr, errAddrInUse) {
			break
		}
	}
	return nil, fmt.Errorf("bench: start mosquitto: %w", lastErr)
}

func brokerConfig(o BrokerOptions, srv pki.Files, port int) string {
	var c strings.Builder
	c.WriteString("# written by decryptd-bench\n")
	if os.Geteuid() == 0 {
		// Mosquitto would drop to user mosquitto, which cannot read the
		// 0700 working directory.
		c.WriteString("user root\n")
	}
	c.WriteString("per_listener_settings false\nallow_anonymous false\n")
	fmt.Fprintf(&c, "persistence true\npersistence_location %s/\npersistence_file mosquitto.db\nautosave_interval %d\n", filepath.Join(o.Dir, "data"), max(o.Autosave, 1))
	fmt.Fprintf(&c, "max_inflight_messages %d\nmax_queued_messages %d\nmax_queued_bytes 0\n", o.MaxInflight, o.MaxQueued)
	c.WriteString("set_tcp_nodelay true\nlog_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\n")
	c.WriteString("log_timestamp true\nlog_timestamp_format %H:%M:%S\nconnection_messages true\n")
	fmt.Fprintf(&c, "\nlistener %d 127.0.0.1\n", port)
	fmt.Fprintf(&c, "cafile %s\ncertfile %s\nkeyfile %s\n", srv.CA, srv.Cert, srv.Key)
	c.WriteString("require_certificate true\nuse_identity_as_username true\ntls_version tlsv1.2\n")
	return c.String()
}

var errAddrInUse = errors.New("address already in use")

func (b *Broker) start(port int) error {
	logf, err := os.OpenFile(b.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	off, _ := logf.Seek(0, 2)
	cmd := exec.Command(MosquittoBinary, "-c", b.conf)
	if b.cpus != "" {
		cmd = exec.Command("taskset", "-c", b.cpus, MosquittoBinary, "-c", b.conf)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group: a ^C reaches the bench, which stops the broker.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", MosquittoBinary, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(exited)
	}()
	b.cmd, b.exited = cmd, exited
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	deadline := time.Now().Add(15 * time.Second)
	for {
		select {
		case <-exited:
			data, _ := os.ReadFile(b.LogFile)
			if int64(len(data)) >= off && bytes.Contains(data[off:], []byte("Address already in use")) {
				return errAddrInUse
			}
			return fmt.Errorf("mosquitto exited during start-up (%s); log %s", cmd.ProcessState, b.LogFile)
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			b.Stop()
			return fmt.Errorf("mosquitto not listening on %s after 15s", addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ClientTLS issues a client certificate for cn and returns its files and
// a TLS configuration trusting the broker's CA.
func (b *Broker) ClientTLS(cn string) (pki.Files, *tls.Config, error) {
	f, err := b.CA.IssueClient(cn)
	if err != nil {
		return pki.Files{}, nil, err
	}
	cfg, err := pki.ClientConfig(f, "127.0.0.1")
	if err != nil {
		return pki.Files{}, nil, err
	}
	return f, cfg, nil
}

// Pid is the broker's process id.
func (b *Broker) Pid() int { return b.cmd.Process.Pid }

// Stop sends SIGTERM and waits (10 s, then SIGKILL).
func (b *Broker) Stop() {
	if b == nil || b.cmd == nil {
		return
	}
	select {
	case <-b.exited:
		return
	default:
	}
	_ = b.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-b.exited:
	case <-time.After(10 * time.Second):
		_ = b.cmd.Process.Kill()
		<-b.exited
	}
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
