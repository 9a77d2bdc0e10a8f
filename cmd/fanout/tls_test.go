package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// writeSelfSigned writes a self-signed ECDSA certificate for 127.0.0.1
// named cn to certFile and keyFile.
func writeSelfSigned(t *testing.T, cn, certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// lockedBuffer collects the child's stderr.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestTLSFlagsAndSIGHUPReload(t *testing.T) {
	bin := buildBinary(t)
	addr := freeAddr(t)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writeSelfSigned(t, "first", certFile, keyFile)
	cmd := exec.Command(bin, "--addr", addr, "--tls-cert", certFile, "--tls-key", keyFile, "--drain-delay", "0s", "--drain-timeout", "2s")
	logs := &lockedBuffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })

	conf := &tls.Config{InsecureSkipVerify: true} // the test looks at the name served
	served := func() (string, error) {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", addr, conf)
		if err != nil {
			return "", err
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].Subject.CommonName, nil
	}
	expect := func(cn string) {
		t.Helper()
		checkFor(t, 10*time.Second, func() error {
			got, err := served()
			if err != nil {
				return err
			}
			if got != cn {
				return fmt.Errorf("served %q, want %q\n%s", got, cn, logs)
			}
			return nil
		})
	}
	expect("first")

	// wss:// works through the command too.
	d := websocket.Dialer{TLSClientConfig: conf, HandshakeTimeout: 5 * time.Second}
	ws, _, err := d.Dial("wss://"+addr+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, msg, err := ws.ReadMessage(); err != nil || !strings.Contains(string(msg), "connected") {
		t.Fatalf("first message %q, %v", msg, err)
	}
	ws.Close()

	writeSelfSigned(t, "second", certFile, keyFile)
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	expect("second")

	// A broken key: the reload fails, is logged, and the old certificate stays.
	if err := os.WriteFile(keyFile, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 5*time.Second, func() error {
		if !strings.Contains(logs.String(), "reload failed") {
			return fmt.Errorf("no reload failure logged:\n%s", logs)
		}
		return nil
	})
	expect("second")

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v\n%s", err, logs)
	}
}

func TestTLSFlagErrors(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	certFile := filepath.Join(dir, "cert.pem")
	writeSelfSigned(t, "x", certFile, filepath.Join(dir, "key.pem"))
	for _, args := range [][]string{
		{"--tls-cert", certFile},                                          // no key
		{"--tls-cert", certFile, "--tls-key", certFile},                   // not a key
		{"--tls-cert", filepath.Join(dir, "nope"), "--tls-key", certFile}, // missing
	} {
		cmd := exec.Command(bin, append([]string{"--addr", "127.0.0.1:0"}, args...)...)
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "tls") {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
}
