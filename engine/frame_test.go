package engine

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/gobwas/ws"
)

// clientFrame builds a raw client frame: fin, rsv bits, opcode, optional
// mask, and the length encoded as given (lenBytes 0 = 7-bit, 2, or 8).
func clientFrame(t testing.TB, fin bool, rsv byte, op ws.OpCode, masked bool, lenBytes int, payload []byte) []byte {
	t.Helper()
	var b []byte
	b0 := byte(op) | rsv<<4
	if fin {
		b0 |= 0x80
	}
	b = append(b, b0)
	var mbit byte
	if masked {
		mbit = 0x80
	}
	switch lenBytes {
	case 0:
		b = append(b, mbit|byte(len(payload)))
	case 2:
		b = append(b, mbit|126)
		b = binary.BigEndian.AppendUint16(b, uint16(len(payload)))
	case 8:
		b = append(b, mbit|127)
		b = binary.BigEndian.AppendUint64(b, uint64(len(payload)))
	}
	p := append([]byte(nil), payload...)
	if masked {
		mask := [4]byte{0x12, 0x34, 0x56, 0x78}
		b = append(b, mask[:]...)
		ws.Cipher(p, mask, 0)
	}
	return append(b, p...)
}

func TestParseHeader(t *testing.T) {
	long := bytes.Repeat([]byte{'a'}, 126)
	tests := []struct {
		name   string
		frame  []byte
		max    int
		want   *CloseError
		length int64
		size   int
	}{
		{"text", clientFrame(t, true, 0, ws.OpText, true, 0, []byte("hi")), 1 << 20, nil, 2, 6},
		{"binary 16-bit length", clientFrame(t, true, 0, ws.OpBinary, true, 2, long), 1 << 20, nil, 126, 8},
		{"binary 64-bit length", clientFrame(t, true, 0, ws.OpBinary, true, 8, bytes.Repeat([]byte{1}, 70000)), 1 << 20, nil, 70000, 14},
		{"fragment start", clientFrame(t, false, 0, ws.OpText, true, 0, []byte("a")), 1 << 20, nil, 1, 6},
		{"unmasked", clientFrame(t, true, 0, ws.OpText, false, 0, []byte("hi")), 1 << 20, errUnmasked, 0, 0},
		{"rsv1", clientFrame(t, true, 4, ws.OpText, true, 0, []byte("hi")), 1 << 20, errReservedBits, 0, 0},
		{"rsv2", clientFrame(t, true, 2, ws.OpText, true, 0, nil), 1 << 20, errReservedBits, 0, 0},
		{"rsv3", clientFrame(t, true, 1, ws.OpText, true, 0, nil), 1 << 20, errReservedBits, 0, 0},
		{"reserved data opcode", clientFrame(t, true, 0, 3, true, 0, nil), 1 << 20, errReservedOpcode, 0, 0},
		{"reserved control opcode", clientFrame(t, true, 0, 0xb, true, 0, nil), 1 << 20, errReservedOpcode, 0, 0},
		{"control over 125", clientFrame(t, true, 0, ws.OpPing, true, 2, long), 1 << 20, errControlTooLong, 0, 0},
		{"fragmented ping", clientFrame(t, false, 0, ws.OpPing, true, 0, nil), 1 << 20, errControlFragment, 0, 0},
		{"fragmented close", clientFrame(t, false, 0, ws.OpClose, true, 0, nil), 1 << 20, errControlFragment, 0, 0},
		{"non-minimal 16-bit length", clientFrame(t, true, 0, ws.OpText, true, 2, []byte("hi")), 1 << 20, errBadLength, 0, 0},
		{"non-minimal 64-bit length", clientFrame(t, true, 0, ws.OpText, true, 8, long), 1 << 20, errBadLength, 0, 0},
		{"64-bit length with top bit", append([]byte{0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0}, 1, 2, 3, 4), 1 << 20, errBadLength, 0, 0},
		{"over max message", clientFrame(t, true, 0, ws.OpBinary, true, 2, long), 100, errTooBig, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, need, err := parseHeader(tt.frame, tt.max, false)
			if need != 0 {
				t.Fatalf("need = %d for a complete header", need)
			}
			if err != tt.want {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if err == nil && (h.length != tt.length || h.size != tt.size) {
				t.Fatalf("length, size = %d, %d; want %d, %d", h.length, h.size, tt.length, tt.size)
			}
		})
	}
}

func TestParseHeaderIncomplete(t *testing.T) {
	frame := clientFrame(t, true, 0, ws.OpBinary, true, 8, bytes.Repeat([]byte{1}, 70000))
	for n := 0; n < 14; n++ {
		_, need, err := parseHeader(frame[:n], 1<<20, false)
		if err != nil || need <= n {
			t.Fatalf("prefix %d: need %d, err %v", n, need, err)
		}
	}
}

func TestValidCloseCode(t *testing.T) {
	for code, want := range map[uint16]bool{
		999: false, 1000: true, 1001: true, 1003: true, 1004: false, 1005: false, 1006: false,
		1007: true, 1011: true, 1014: true, 1015: false, 1016: false, 2999: false, 3000: true, 4999: true, 5000: false,
	} {
		if got := validCloseCode(code); got != want {
			t.Errorf("validCloseCode(%d) = %v", code, got)
		}
	}
}

func FuzzParseHeader(f *testing.F) {
	f.Add(clientFrame(f, true, 0, ws.OpText, true, 0, []byte("hello")))
	f.Add(clientFrame(f, false, 0, ws.OpBinary, true, 2, bytes.Repeat([]byte{1}, 200)))
	f.Add(clientFrame(f, true, 0, ws.OpClose, true, 0, []byte{3, 232}))
	f.Add([]byte{0x81, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, need, err := parseHeader(b, 1<<20, false)
		if need > 0 {
			if need <= len(b) || need > maxClientHeaderLen || err != nil {
				t.Fatalf("need %d with %d bytes, err %v", need, len(b), err)
			}
			return
		}
		if err == nil && (h.length < 0 || h.length > 1<<20 || h.size > len(b)) {
			t.Fatalf("accepted bad header %+v", h)
		}
	})
}
