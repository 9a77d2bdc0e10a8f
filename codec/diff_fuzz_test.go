package codec

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

// Differential fuzz targets: every field DecodeCommand returns for a message
// it accepts must equal what a reference decoder (encoding/json,
// msgpack/v5) reads from the same message. The targets of fuzz_test.go check
// accept/reject consistency and round trips; these check the values.

func FuzzDiffCommandJSON(f *testing.F) {
	seedCommands(f, JSON)
	f.Fuzz(func(t *testing.T, msg []byte) { diffCommand(t, JSON, msg) })
}

func FuzzDiffCommandMsgpack(f *testing.F) {
	seedCommands(f, Msgpack)
	f.Fuzz(func(t *testing.T, msg []byte) { diffCommand(t, Msgpack, msg) })
}

// refValue decodes msg with the reference decoder of enc into a map, or
// reports false when the reference does not see an object.
func refValue(enc Encoding, b []byte) (any, bool) {
	var v any
	if enc == JSON {
		d := json.NewDecoder(bytes.NewReader(b))
		d.UseNumber()
		if err := d.Decode(&v); err != nil {
			return nil, false
		}
		return v, true
	}
	// Maps as map[any]any: msgpack keys need not be strings (DecodeCommand
	// skips the others).
	d := msgpack.NewDecoder(bytes.NewReader(b))
	d.SetMapDecoder(func(d *msgpack.Decoder) (any, error) { return d.DecodeUntypedMap() })
	if err := d.Decode(&v); err != nil {
		return nil, false
	}
	return v, true
}

// field returns m[key] for a reference map of either decoder.
func field(m any, key string) (any, bool) {
	switch m := m.(type) {
	case map[string]any:
		v, ok := m[key]
		return v, ok
	case map[any]any:
		v, ok := m[key]
		return v, ok
	}
	return nil, false
}

// refUint reads an unsigned integer the reference decoded.
func refUint(v any) (uint64, bool) {
	switch n := v.(type) {
	case json.Number:
		var u uint64
		_, err := fmt.Sscan(string(n), &u)
		return u, err == nil
	case int8, int16, int32, int64:
		i := reflect.ValueOf(n).Int()
		return uint64(i), i >= 0
	case uint8, uint16, uint32, uint64:
		return reflect.ValueOf(n).Uint(), true
	}
	return 0, false
}

func refString(v any) (string, bool) {
	s, ok := v.(string)
	return s, ok
}

func diffCommand(t *testing.T, enc Encoding, msg []byte) {
	var cmd Command
	if err := DecodeCommand(enc, msg, &cmd); err != nil {
		return // accept/reject consistency is fuzz_test.go's
	}
	ref, ok := refValue(enc, msg)
	if !ok {
		t.Fatalf("accepted %q, which the reference decoder rejects", msg)
	}
	fail := func(what string, got, want any) {
		t.Helper()
		t.Fatalf("%q: %s = %v, reference %v", msg, what, got, want)
	}
	get := func(key string) any {
		v, _ := field(ref, key)
		return v
	}
	if op, _ := refString(get("op")); op != cmd.Op.String() {
		fail("op", cmd.Op.String(), get("op"))
	}
	if id := get("id"); (id != nil) != cmd.HasID {
		fail("has id", cmd.HasID, id)
	} else if id != nil {
		if u, ok := refUint(id); !ok || u != cmd.ID {
			fail("id", cmd.ID, id)
		}
	}
	switch cmd.Op {
	case OpSubscribe, OpUnsubscribe, OpPublish, OpPresence, OpHistory:
		if ch, _ := refString(get("channel")); ch != string(cmd.Channel) {
			fail("channel", string(cmd.Channel), get("channel"))
		}
	}
	switch cmd.Op {
	case OpPublish:
		want, present := field(ref, "data")
		if !present {
			fail("data", string(cmd.Data), "absent")
		}
		got, ok := refValue(enc, cmd.Data)
		if !ok {
			fail("data (undecodable)", cmd.Data, want)
		}
		if !reflect.DeepEqual(normalize(got), normalize(want)) {
			fail("data", got, want)
		}
	case OpSubscribe:
		r := get("recover")
		if (r != nil) != cmd.HasRecover {
			fail("has recover", cmd.HasRecover, r)
		}
		if r != nil {
			if e, _ := field(r, "epoch"); e != nil {
				if s, _ := refString(e); s != string(cmd.RecoverEpoch) {
					fail("recover.epoch", string(cmd.RecoverEpoch), e)
				}
			}
			if o, _ := field(r, "offset"); o != nil {
				if u, ok := refUint(o); !ok || u != cmd.RecoverOffset {
					fail("recover.offset", cmd.RecoverOffset, o)
				}
			}
		}
		if p, _ := get("presence").(bool); p != cmd.Presence {
			fail("presence", cmd.Presence, get("presence"))
		}
	case OpHistory:
		if l := get("limit"); l != nil {
			u, ok := refUint(l)
			if !ok || (u <= math.MaxInt && int(u) != cmd.Limit) {
				fail("limit", cmd.Limit, l)
			}
		} else if cmd.Limit != 0 {
			fail("limit", cmd.Limit, nil)
		}
	}
	switch cmd.Op {
	case OpConnect, OpRefresh:
		if tok, _ := refString(get("token")); tok != string(cmd.Token) {
			fail("token", string(cmd.Token), get("token"))
		}
	}
	switch cmd.Op {
	case OpConnect, OpSubscribe:
		if name, _ := refString(get("name")); name != string(cmd.Name) {
			fail("name", string(cmd.Name), get("name"))
		}
	}
}

// normalize makes the two decoders' maps and integer widths comparable.
func normalize(v any) any {
	switch v := v.(type) {
	case map[any]any:
		m := make(map[string]any, len(v))
		for k, x := range v {
			m[fmt.Sprint(k)] = normalize(x)
		}
		return m
	case map[string]any:
		m := make(map[string]any, len(v))
		for k, x := range v {
			m[k] = normalize(x)
		}
		return m
	case []any:
		out := make([]any, len(v))
		for i, x := range v {
			out[i] = normalize(x)
		}
		return out
	case int8, int16, int32, int64:
		return reflect.ValueOf(v).Int()
	case uint8, uint16, uint32, uint64:
		u := reflect.ValueOf(v).Uint()
		if u <= math.MaxInt64 {
			return int64(u)
		}
		return u
	case float32:
		return float64(v)
	}
	return v
}
