package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"github.com/decryptd/decryptd/internal/pki"
)

// SideCSub is the C-client side of the drain: Mosquitto's own
// mosquitto_sub (Debian package mosquitto-clients, libmosquitto).
const SideCSub = "mosquitto_sub"

// MosquittoSubBinary is where the Debian package installs mosquitto_sub.
const MosquittoSubBinary = "/usr/bin/mosquitto_sub"

// Binaries the benchmark runs. The command sets them from its flags (to run
// a prebuilt bench on a machine without the Debian packages); empty means
// the name on PATH, else the Debian package's path.
var (
	MosquittoPath    string
	MosquittoSubPath string
)

func mosquittoBin() string { return findBinary(MosquittoPath, "mosquitto", MosquittoBinary) }

// MosquittoSub returns the mosquitto_sub the drain would run, or "" when
// there is none.
func MosquittoSub() string {
	p := findBinary(MosquittoSubPath, "mosquitto_sub", MosquittoSubBinary)
	if _, err := os.Stat(p); err != nil {
		return ""
	}
	return p
}

func findBinary(given, name, fallback string) string {
	if given != "" {
		return given
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	return fallback
}

// drainCSub drains the backlog with mosquitto_sub: the same persistent
// session (clean session off, -c), QoS 1, the same shared subscription and
// client certificate, every message written to /dev/null, exiting after
// the n-th (-C n). The time is from starting the process to its exit, so
// it includes the process start, the TLS handshake and the disconnect
// (milliseconds, as the bare paho side's connect). Its CPU is the child's
// own (user + system from its rusage), not this process's.
func drainCSub(ctx context.Context, bin string, b *Broker, brokerURL string, client pki.Files, id string, n int, progress io.Writer, label string) (*DrainRun, error) {
	u, err := url.Parse(brokerURL)
	if err != nil {
		return nil, err
	}
	args := []string{"-h", u.Hostname(), "-p", u.Port()}
	if u.Scheme == "ssl" {
		args = append(args, "--cafile", client.CA, "--cert", client.Cert, "--key", client.Key, "--tls-version", "tlsv1.2")
	}
	args = append(args, "-i", id, "-c", "-q", "1", "-t", sharedFilter, "-C", strconv.Itoa(n), "-k", "30")
	cctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(cctx, bin, args...)
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return nil, err
	}
	defer devnull.Close()
	cmd.Stdout = devnull
	var stderr limitedBuffer
	cmd.Stderr = &stderr

	settle()
	bcpu0 := procCPU(b.Pid())
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	stop := reportEvery(progress, time.Second, func() string {
		return fmt.Sprintf("%s: running for %.0f s (mosquitto_sub reports nothing until it exits)", label, time.Since(start).Seconds())
	})
	err = cmd.Wait()
	end := time.Now()
	bcpu1 := procCPU(b.Pid())
	stop()
	if err != nil {
		if cctx.Err() != nil {
			err = errors.Join(err, cctx.Err())
		}
		return nil, fmt.Errorf("%s: %w (stderr: %q)", bin, err, stderr.String())
	}
	st := cmd.ProcessState
	var peak int64
	if ru, ok := st.SysUsage().(*syscall.Rusage); ok {
		peak = ru.Maxrss << 10 // KiB on Linux
	}
	secs := end.Sub(start).Seconds()
	return &DrainRun{
		Side: SideCSub, Messages: n, Seconds: secs, Rate: float64(n) / secs,
		CPUPerMsgUS:       float64((st.UserTime() + st.SystemTime()).Microseconds()) / float64(n),
		BrokerCPUPerMsgUS: float64((bcpu1 - bcpu0).Microseconds()) / float64(n),
		PeakRSS:           peak,
	}, nil
}

// limitedBuffer keeps the first 4 KiB written to it (a child's stderr).
type limitedBuffer struct{ b []byte }

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := 4096 - len(l.b); room > 0 {
		l.b = append(l.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (l *limitedBuffer) String() string { return string(l.b) }
