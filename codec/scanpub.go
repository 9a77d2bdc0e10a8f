package codec

// ScanPub is the client's fast path for the one message that arrives in
// bulk: the pub push. It reads a message in place, without copies or
// allocations, and returns the push's offset and its data value, still
// encoded in enc and aliasing msg (valid as long as msg is). Keys may come
// in any order; a key given twice counts with its last value, as in
// DecodeServerMessage. An absent "data" gives nil data.
//
// ok is true only when DecodeServerMessage would decode msg without error
// as a pub push with the same offset and the same data bytes. It is false
// for every other message and also for pub pushes it does not read itself:
// ones with escaped keys or an escaped "push" value, or with fields that a
// pub push does not carry (id, ok, error, client, user, name, recovered,
// count, publications, clients). Callers then fall back to DecodeServerMessage.
func ScanPub(enc Encoding, msg []byte) (offset uint64, data []byte, ok bool) {
	switch enc {
	case JSON:
		return scanPubJSON(msg)
	case Msgpack:
		return scanPubMsgpack(msg)
	}
	return 0, nil, false
}

// notPubField reports the known top-level fields that a pub push does not
// carry; ScanPub leaves messages with them to DecodeServerMessage, which
// checks their types.
func notPubField(key []byte) bool {
	switch string(key) {
	case "id", "ok", "error", "client", "user", "name", "recovered", "count", "publications", "clients":
		return true
	}
	return false
}

// --- JSON ---

func scanPubJSON(b []byte) (offset uint64, data []byte, ok bool) {
	i := skipWS(b, 0)
	if i >= len(b) || b[i] != '{' {
		return 0, nil, false
	}
	isPub := false
	i, ok = jsonScanObject(b, i+1, func(key []byte, i int) int {
		switch string(key) {
		case "push":
			if j, null := jsonNull(b, i); null {
				return j
			}
			if b[i] != '"' {
				return -1
			}
			end, fl := scanString(b, i+1)
			if end < 0 || fl&strEscaped != 0 {
				return -1
			}
			isPub = string(b[i+1:end-1]) == "pub"
			return end
		case "offset":
			if j, null := jsonNull(b, i); null {
				offset = 0 // the decoder's value for null
				return j
			}
			if b[i] < '0' || b[i] > '9' {
				return -1
			}
			end, kind, _ := scanNumber(b, i)
			if end < 0 || kind != numInt {
				return -1
			}
			v, fits := parseUintDigits(b[i:end])
			if !fits {
				return -1
			}
			offset = v
			return end
		case "data":
			end := jsonSkip(b, i)
			if end >= 0 {
				data = b[i:end]
			}
			return end
		case "channel", "epoch":
			return jsonStrOrNull(b, i)
		case "info":
			return jsonInfo(b, i)
		}
		if notPubField(key) {
			return -1
		}
		return jsonSkip(b, i)
	})
	if !ok || !isPub || skipWS(b, i) != len(b) {
		return 0, nil, false
	}
	return offset, data, true
}

// jsonScanObject walks the members of an object whose '{' is at i-1, as
// jreader.object does, and calls value for each one with the key (raw: an
// escaped key ends the scan) and the index of the value, whitespace
// skipped and known to be in range. value returns the index after the value
// or -1. jsonScanObject returns the index after the '}'.
func jsonScanObject(b []byte, i int, value func(key []byte, i int) int) (int, bool) {
	i = skipWS(b, i)
	if i < len(b) && b[i] == '}' {
		return i + 1, true
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return 0, false
		}
		end, fl := scanString(b, i+1)
		if end < 0 || fl&strEscaped != 0 {
			return 0, false
		}
		key := b[i+1 : end-1]
		i = skipWS(b, end)
		if i >= len(b) || b[i] != ':' {
			return 0, false
		}
		if i = skipWS(b, i+1); i >= len(b) {
			return 0, false
		}
		if i = value(key, i); i < 0 {
			return 0, false
		}
		if i = skipWS(b, i); i >= len(b) {
			return 0, false
		}
		switch b[i] {
		case ',':
			i = skipWS(b, i+1)
		case '}':
			return i + 1, true
		default:
			return 0, false
		}
	}
}

// jsonNull consumes a null at i if there is one.
func jsonNull(b []byte, i int) (int, bool) {
	if len(b)-i >= 4 && string(b[i:i+4]) == "null" {
		return i + 4, true
	}
	return i, false
}

// jsonSkip returns the index after the well-formed value at i, or -1. It
// applies the same checks (and depth limit) as the decoder's skip.
func jsonSkip(b []byte, i int) int {
	s := jscan{b: b}
	return s.value(i, 1)
}

// jsonStrOrNull skips a string or null at i (what jreader.str accepts).
func jsonStrOrNull(b []byte, i int) int {
	if j, null := jsonNull(b, i); null {
		return j
	}
	if b[i] != '"' {
		return -1
	}
	end, _ := scanString(b, i+1)
	return end
}

// jsonInfo skips an info object (or null) whose client and user are
// strings, as the decoder requires.
func jsonInfo(b []byte, i int) int {
	if j, null := jsonNull(b, i); null {
		return j
	}
	if b[i] != '{' {
		return -1
	}
	end, ok := jsonScanObject(b, i+1, func(key []byte, i int) int {
		switch string(key) {
		case "client", "user":
			return jsonStrOrNull(b, i)
		}
		return jsonSkip(b, i)
	})
	if !ok {
		return -1
	}
	return end
}

// --- msgpack ---

func scanPubMsgpack(b []byte) (offset uint64, data []byte, ok bool) {
	isPub := false
	i := mpScanMap(b, 0, func(key []byte, i int) int {
		switch string(key) {
		case "push":
			if i < len(b) && b[i] == mpNil {
				return i + 1
			}
			s, next, isStr := mpStr(b, i)
			if !isStr || next < 0 {
				return -1
			}
			isPub = string(s) == "pub"
			return next
		case "offset":
			v, next, kind := mpInt(b, i)
			switch kind {
			case mpIntOK:
				offset = v
				return next
			case mpIntNil:
				offset = 0 // the decoder's value for nil
				return next
			}
			return -1
		case "data":
			end := mpSkip(b, i)
			if end >= 0 {
				data = b[i:end]
			}
			return end
		case "channel", "epoch":
			return mpStrOrNil(b, i)
		case "info":
			return mpInfo(b, i)
		}
		if notPubField(key) {
			return -1
		}
		return mpSkip(b, i)
	})
	if i != len(b) || !isPub {
		return 0, nil, false
	}
	return offset, data, true
}

// mpScanMap walks the entries of the map at i, as mreader.object does:
// entries with a key that is not a str are skipped, the others passed to
// value with the index of their value; value returns the index after it
// or -1. mpScanMap returns the index after the map, or -1.
func mpScanMap(b []byte, i int, value func(key []byte, i int) int) int {
	n, i, isMap := mpMapLen(b, i)
	if !isMap || i < 0 {
		return -1
	}
	for ; n > 0; n-- {
		key, next, isStr := mpStr(b, i)
		if next < 0 {
			return -1
		}
		if !isStr {
			if i = mpSkip(b, i); i >= 0 {
				i = mpSkip(b, i)
			}
		} else {
			i = value(key, next)
		}
		if i < 0 {
			return -1
		}
	}
	return i
}

// mpSkip returns the index after the well-formed value at i, or -1, with
// the decoder's checks and depth limit.
func mpSkip(b []byte, i int) int {
	s := mscan{b: b}
	return s.value(i, 1)
}

// mpStrOrNil skips a str or nil at i (what mreader.str accepts).
func mpStrOrNil(b []byte, i int) int {
	if i < len(b) && b[i] == mpNil {
		return i + 1
	}
	_, next, isStr := mpStr(b, i)
	if !isStr {
		return -1
	}
	return next
}

// mpInfo skips an info map (or nil) whose client and user are strs.
func mpInfo(b []byte, i int) int {
	if i < len(b) && b[i] == mpNil {
		return i + 1
	}
	return mpScanMap(b, i, func(key []byte, i int) int {
		switch string(key) {
		case "client", "user":
			return mpStrOrNil(b, i)
		}
		return mpSkip(b, i)
	})
}
