package wsframe

import (
	"bytes"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

func TestFinishHeaders(t *testing.T) {
	tests := []struct {
		name    string
		payload int
		header  int
	}{
		{"empty", 0, 2},
		{"small", 125, 2},
		{"medium-min", 126, 4},
		{"medium-max", 65535, 4},
		{"large", 65536, 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			payload := bytes.Repeat([]byte{'x'}, tt.payload)
			f := New(ws.OpText, payload)
			defer f.Release()
			if got := f.Len(); got != tt.header+tt.payload {
				t.Fatalf("Len = %d, want %d", got, tt.header+tt.payload)
			}
			h, err := ws.ReadHeader(bytes.NewReader(f.Bytes()))
			if err != nil {
				t.Fatal(err)
			}
			if !h.Fin || h.OpCode != ws.OpText || h.Masked || h.Length != int64(tt.payload) {
				t.Fatalf("header = %+v", h)
			}
			if !bytes.Equal(f.Bytes()[tt.header:], payload) || !bytes.Equal(f.Payload(), payload) {
				t.Fatal("payload differs")
			}
		})
	}
}

func TestCloseCutsReasonOnRuneBoundary(t *testing.T) {
	f := Close(1008, strings.Repeat("é", 100))
	defer f.Release()
	p := f.Payload()
	if len(p) > 125 {
		t.Fatalf("close payload %d bytes", len(p))
	}
	if !utf8.Valid(p[2:]) {
		t.Fatal("reason cut inside a rune")
	}
}

func TestReleaseRecyclesAfterLastReference(t *testing.T) {
	f := New(ws.OpBinary, []byte("abc"))
	f.Retain(2)
	f.Release()
	f.Release()
	if f.B == nil {
		t.Fatal("buffer recycled while a reference remains")
	}
	f.Release()
	if f.B != nil {
		t.Fatal("buffer not recycled after the last reference")
	}
	defer func() {
		if recover() == nil {
			t.Fatal("extra Release did not panic")
		}
	}()
	f.refs.Store(0)
	f.Release()
}

func BenchmarkBuild(b *testing.B) {
	for _, size := range []int{16, 128, 4096} {
		payload := bytes.Repeat([]byte{'x'}, size)
		b.Run("size="+itoa(size), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(size))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				New(ws.OpText, payload).Release()
			}
		})
	}
}

func itoa(n int) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}
