package codec

import (
	"strconv"
)

// Errors of DecodeCommand with fixed messages, built once so that rejecting
// a command allocates nothing.
var (
	errBadID        = &CommandError{CodeBadRequest, "id must be an unsigned integer"}
	errMissingOp    = &CommandError{CodeBadRequest, "missing op"}
	errOpType       = &CommandError{CodeBadRequest, "op must be a string"}
	errNoChannel    = &CommandError{CodeBadRequest, "missing channel"}
	errChannelType  = &CommandError{CodeBadRequest, "channel must be a string"}
	errBadChannel   = &CommandError{CodeBadRequest, "invalid channel name: 1-255 characters of A-Z a-z 0-9 _ - : . /"}
	errNoData       = &CommandError{CodeBadRequest, "publish needs data"}
	errRecoverType  = &CommandError{CodeBadRequest, "recover must be an object {epoch: string, offset: unsigned integer}"}
	errPresenceType = &CommandError{CodeBadRequest, "presence must be a boolean"}
	errLimitType    = &CommandError{CodeBadRequest, "limit must be a non-negative integer"}
	errNoToken      = &CommandError{CodeBadRequest, "refresh needs token"}
	errTokenType    = &CommandError{CodeBadRequest, "token must be a string"}
	errNameType     = &CommandError{CodeBadRequest, "name must be a string"}
)

// DecodeCommand decodes one client message. It returns ErrNotObject when the
// message is not an object of the encoding (close 1007) and a *CommandError
// when it is an object but not a valid command; in that case cmd.ID/HasID are
// set if the id could be read, so the error reply can carry it.
//
// The whole message is validated: malformed or truncated input, trailing
// bytes after the object, invalid UTF-8 in a JSON string (raw bytes), or
// nesting deeper than MaxDepth give ErrNotObject. Unknown fields are ignored,
// for duplicate fields the last one wins, and a null id, channel, op,
// recover, presence, limit, token or name counts as absent ("data": null is
// the value null). Fields that the op does not use are not validated beyond
// syntax and are left zero in cmd: token belongs to connect (optional) and
// refresh (required), name to connect and subscribe (optional); neither is
// checked beyond being a string (what a token or a name may be is the
// server's policy). cmd.Op is set as soon as the op is known, even when a
// *CommandError follows.
//
// Data is the raw bytes of the complete data value, aliasing msg; it is
// checked to be expressible in both encodings (so that Transcode to the other
// encoding succeeds): a JSON string with a lone surrogate escape (\ud800),
// a JSON number out of float64 range, a msgpack ext value, non-string map key,
// invalid UTF-8 str or NaN/infinite float make publish a bad_request.
// Channel, RecoverEpoch, Token and Name alias msg too, except for JSON strings written
// with escapes, whose unescaped text lives in a buffer owned by cmd (valid
// until the next DecodeCommand into cmd).
//
// Msgpack map keys must be str to be recognized; other keys are skipped
// with their values. id, recover.offset and limit accept every int and uint
// width (a negative value is a bad_request, a float too); a limit beyond
// the int range is clamped. data may be any value, bin included.
//
// It allocates nothing for a valid command (JSON strings written with
// escapes excepted, until cmd's buffer has grown), nor for a rejected one
// except the unknown_op error, whose message names the op.
func DecodeCommand(enc Encoding, msg []byte, cmd *Command) error {
	switch enc {
	case JSON:
		return decodeCommandJSON(msg, cmd)
	case Msgpack:
		return decodeCommandMsgpack(msg, cmd)
	}
	return ErrEncoding
}

// Field states while decoding a command.
const (
	stAbsent uint8 = iota
	stOK
	stBad
)

// cmdFields collects a command's fields in any order; finish validates them.
type cmdFields struct {
	op, channel, data, epoch, token, name  []byte
	id, offset                             uint64
	limit                                  int
	opSt, idSt, chSt, recSt, presSt, limSt uint8
	tokSt, nameSt                          uint8
	hasData, presence                      bool
	dataErr                                error
}

func (f *cmdFields) finish(cmd *Command) error {
	switch f.idSt {
	case stOK:
		cmd.ID, cmd.HasID = f.id, true
	case stBad:
		return errBadID
	}
	switch f.opSt {
	case stAbsent:
		return errMissingOp
	case stBad:
		return errOpType
	}
	op := opFromName(f.op)
	if op == OpUnknown {
		name := f.op
		if len(name) > 64 {
			name = name[:64]
		}
		return &CommandError{CodeUnknownOp, "unknown op " + strconv.Quote(string(name))}
	}
	cmd.Op = op
	switch op {
	case OpPing:
		return nil
	case OpConnect, OpRefresh:
		switch f.tokSt {
		case stOK:
			cmd.Token = f.token
		case stBad:
			return errTokenType
		default:
			if op == OpRefresh {
				return errNoToken
			}
		}
		if op == OpConnect {
			return f.finishName(cmd)
		}
		return nil
	}
	switch f.chSt {
	case stAbsent:
		return errNoChannel
	case stBad:
		return errChannelType
	}
	if !ValidChannel(f.channel) {
		return errBadChannel
	}
	cmd.Channel = f.channel
	switch op {
	case OpPublish:
		if !f.hasData {
			return errNoData
		}
		if f.dataErr != nil {
			return commandError(f.dataErr)
		}
		cmd.Data = f.data
	case OpSubscribe:
		switch f.recSt {
		case stOK:
			cmd.HasRecover, cmd.RecoverEpoch, cmd.RecoverOffset = true, f.epoch, f.offset
		case stBad:
			return errRecoverType
		}
		switch f.presSt {
		case stOK:
			cmd.Presence = f.presence
		case stBad:
			return errPresenceType
		}
		return f.finishName(cmd)
	case OpHistory:
		switch f.limSt {
		case stOK:
			cmd.Limit = f.limit
		case stBad:
			return errLimitType
		}
	}
	return nil
}

// finishName sets cmd.Name from the optional name field (connect,
// subscribe).
func (f *cmdFields) finishName(cmd *Command) error {
	switch f.nameSt {
	case stOK:
		cmd.Name = f.name
	case stBad:
		return errNameType
	}
	return nil
}

// clampInt converts a limit to int, saturating.
func clampInt(v uint64) int {
	if v > uint64(maxInt) {
		return maxInt
	}
	return int(v)
}

const maxInt = int(^uint(0) >> 1)

// --- JSON ---

// maxEscapedKey is the longest escaped key that can unescape to a known
// field name (8 bytes, each written as a 6-byte \u escape).
const maxEscapedKey = 48

func decodeCommandJSON(msg []byte, cmd *Command) error {
	scratch := cmd.scratch[:0]
	*cmd = Command{}
	var f cmdFields
	s := jscan{b: msg}
	n := len(msg)
	i := skipWS(msg, 0)
	if i >= n || msg[i] != '{' {
		return ErrNotObject
	}
	i = skipWS(msg, i+1)
	if i < n && msg[i] == '}' {
		i++
	} else {
		var kbuf [maxEscapedKey]byte
		for {
			if i >= n || msg[i] != '"' {
				return ErrNotObject
			}
			ke, kfl := scanString(msg, i+1)
			if ke < 0 {
				return ErrNotObject
			}
			key := msg[i+1 : ke-1]
			if kfl&strEscaped != 0 {
				if len(key) > maxEscapedKey {
					key = nil
				} else {
					key = appendUnescaped(kbuf[:0], key)
				}
			}
			i = skipWS(msg, ke)
			if i >= n || msg[i] != ':' {
				return ErrNotObject
			}
			i = skipWS(msg, i+1)
			switch string(key) {
			case "op":
				f.op, f.opSt, i = s.strValue(i, &scratch)
			case "id":
				var ovf bool
				f.id, f.idSt, ovf, i = s.uintValue(i)
				if ovf {
					f.idSt = stBad
				}
			case "channel":
				f.channel, f.chSt, i = s.strValue(i, &scratch)
			case "token":
				f.token, f.tokSt, i = s.strValue(i, &scratch)
			case "name":
				f.name, f.nameSt, i = s.strValue(i, &scratch)
			case "data":
				s.unsup = nil
				end := s.value(i, 1)
				if end >= 0 {
					f.data, f.hasData, f.dataErr = msg[i:end:end], true, s.unsup
				}
				i = end
			case "recover":
				i = s.recoverValue(i, &scratch, &f)
			case "presence":
				f.presSt = stBad
				if i < n {
					switch msg[i] {
					case 't':
						f.presSt, f.presence = stOK, true
					case 'f':
						f.presSt, f.presence = stOK, false
					case 'n':
						f.presSt = stAbsent
					}
				}
				i = s.value(i, 1)
			case "limit":
				var v uint64
				var ovf bool
				v, f.limSt, ovf, i = s.uintValue(i)
				f.limit = clampInt(v)
				if ovf {
					f.limit = maxInt
				}
			default:
				i = s.value(i, 1)
			}
			if i < 0 {
				return ErrNotObject
			}
			i = skipWS(msg, i)
			if i >= n {
				return ErrNotObject
			}
			if msg[i] == ',' {
				i = skipWS(msg, i+1)
				continue
			}
			if msg[i] != '}' {
				return ErrNotObject
			}
			i++
			break
		}
	}
	if skipWS(msg, i) != n {
		return ErrNotObject
	}
	cmd.scratch = scratch
	return f.finish(cmd)
}

// strValue reads a string-typed field at i: the (unescaped) string and
// stOK, stAbsent for null, or stBad for another type (skipped).
func (s *jscan) strValue(i int, scratch *[]byte) ([]byte, uint8, int) {
	b := s.b
	if i < len(b) && b[i] == '"' {
		end, fl := scanString(b, i+1)
		if end < 0 {
			return nil, stBad, s.fail()
		}
		v := b[i+1 : end-1 : end-1]
		if fl&strEscaped != 0 {
			start := len(*scratch)
			*scratch = appendUnescaped(*scratch, v)
			v = (*scratch)[start:len(*scratch):len(*scratch)]
		}
		return v, stOK, end
	}
	if i < len(b) && b[i] == 'n' {
		return nil, stAbsent, s.lit(i, "null")
	}
	return nil, stBad, s.value(i, 1)
}

// uintValue reads an unsigned-integer field at i: stOK (ovf when it does
// not fit in uint64), stAbsent for null, or stBad for anything else (a
// negative or fractional number, another type).
func (s *jscan) uintValue(i int) (v uint64, st uint8, ovf bool, next int) {
	b := s.b
	if i < len(b) {
		c := b[i]
		if c >= '0' && c <= '9' {
			end, kind, _ := scanNumber(b, i)
			if end < 0 {
				return 0, stBad, false, s.fail()
			}
			if kind != numInt {
				return 0, stBad, false, end
			}
			v, ok := parseUintDigits(b[i:end])
			return v, stOK, !ok, end
		}
		if c == 'n' {
			return 0, stAbsent, false, s.lit(i, "null")
		}
	}
	return 0, stBad, false, s.value(i, 1)
}

// recoverValue reads the recover field at i into f.
func (s *jscan) recoverValue(i int, scratch *[]byte, f *cmdFields) int {
	b := s.b
	f.recSt = stBad
	if i >= len(b) || b[i] != '{' {
		if i < len(b) && b[i] == 'n' {
			f.recSt = stAbsent
		}
		return s.value(i, 1)
	}
	var epochSt, offSt uint8
	var ovf bool
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		return i + 1
	}
	var kbuf [maxEscapedKey]byte
	for {
		if i >= len(b) || b[i] != '"' {
			return s.fail()
		}
		ke, kfl := scanString(b, i+1)
		if ke < 0 {
			return s.fail()
		}
		key := b[i+1 : ke-1]
		if kfl&strEscaped != 0 {
			if len(key) > maxEscapedKey {
				key = nil
			} else {
				key = appendUnescaped(kbuf[:0], key)
			}
		}
		i = skipWS(b, ke)
		if i >= len(b) || b[i] != ':' {
			return s.fail()
		}
		i = skipWS(b, i+1)
		switch string(key) {
		case "epoch":
			f.epoch, epochSt, i = s.strValue(i, scratch)
		case "offset":
			f.offset, offSt, ovf, i = s.uintValue(i)
			if ovf {
				offSt = stBad
			}
		default:
			i = s.value(i, 2)
		}
		if i < 0 {
			return -1
		}
		i = skipWS(b, i)
		if i >= len(b) {
			return s.fail()
		}
		if b[i] == ',' {
			i = skipWS(b, i+1)
			continue
		}
		if b[i] != '}' {
			return s.fail()
		}
		if epochSt == stOK && offSt == stOK {
			f.recSt = stOK
		}
		return i + 1
	}
}

// --- msgpack ---

func decodeCommandMsgpack(msg []byte, cmd *Command) error {
	*cmd = Command{scratch: cmd.scratch}
	n, i, ok := mpMapLen(msg, 0)
	if !ok || i < 0 {
		return ErrNotObject
	}
	var f cmdFields
	s := mscan{b: msg}
	for ; n > 0; n-- {
		key, next, isStr := mpStr(msg, i)
		if next < 0 {
			return ErrNotObject
		}
		if !isStr { // a non-string key: skip it and its value
			if i = s.value(i, 1); i < 0 {
				return ErrNotObject
			}
			if i = s.value(i, 1); i < 0 {
				return ErrNotObject
			}
			continue
		}
		i = next
		if i >= len(msg) {
			return ErrNotObject
		}
		switch string(key) {
		case "op":
			f.op, f.opSt, i = s.strValue(i)
		case "id":
			var kind int
			f.id, next, kind = mpInt(msg, i)
			f.idSt, i = s.uintState(i, next, kind)
		case "channel":
			f.channel, f.chSt, i = s.strValue(i)
		case "token":
			f.token, f.tokSt, i = s.strValue(i)
		case "name":
			f.name, f.nameSt, i = s.strValue(i)
		case "data":
			s.check, s.unsup = true, nil
			end := s.value(i, 1)
			s.check = false
			if end >= 0 {
				f.data, f.hasData, f.dataErr = msg[i:end:end], true, s.unsup
			}
			i = end
		case "recover":
			i = s.recoverValue(i, &f)
		case "presence":
			switch msg[i] {
			case mpTrue:
				f.presSt, f.presence = stOK, true
			case mpFalse:
				f.presSt, f.presence = stOK, false
			case mpNil:
				f.presSt = stAbsent
			default:
				f.presSt = stBad
			}
			i = s.value(i, 1)
		case "limit":
			v, next, kind := mpInt(msg, i)
			f.limSt, i = s.uintState(i, next, kind)
			f.limit = clampInt(v)
		default:
			i = s.value(i, 1)
		}
		if i < 0 {
			return ErrNotObject
		}
	}
	if i != len(msg) {
		return ErrNotObject
	}
	return f.finish(cmd)
}

// strValue reads a str-typed field at i (i < len(s.b)).
func (s *mscan) strValue(i int) ([]byte, uint8, int) {
	v, next, isStr := mpStr(s.b, i)
	if isStr {
		return v, stOK, next
	}
	if s.b[i] == mpNil {
		return nil, stAbsent, i + 1
	}
	return nil, stBad, s.value(i, 1)
}

// uintState turns an mpInt result at i into a field state and next index.
func (s *mscan) uintState(i, next, kind int) (uint8, int) {
	switch kind {
	case mpIntOK:
		return stOK, next
	case mpIntNil:
		return stAbsent, next
	case mpIntNeg:
		return stBad, next
	}
	if next < 0 {
		return stBad, s.fail()
	}
	return stBad, s.value(i, 1)
}

// recoverValue reads the recover field at i (i < len(s.b)) into f.
func (s *mscan) recoverValue(i int, f *cmdFields) int {
	b := s.b
	n, next, ok := mpMapLen(b, i)
	if !ok {
		f.recSt = stBad
		if b[i] == mpNil {
			f.recSt = stAbsent
		}
		return s.value(i, 1)
	}
	if next < 0 {
		return s.fail()
	}
	i = next
	var epochSt, offSt uint8
	for ; n > 0; n-- {
		key, next, isStr := mpStr(b, i)
		if next < 0 {
			return s.fail()
		}
		if !isStr {
			if i = s.value(i, 2); i >= 0 {
				i = s.value(i, 2)
			}
		} else if i = next; i >= len(b) {
			return s.fail()
		} else {
			switch string(key) {
			case "epoch":
				f.epoch, epochSt, i = s.strValue(i)
			case "offset":
				v, next, kind := mpInt(b, i)
				f.offset = v
				offSt, i = s.uintState(i, next, kind)
			default:
				i = s.value(i, 2)
			}
		}
		if i < 0 {
			return -1
		}
	}
	f.recSt = stBad
	if epochSt == stOK && offSt == stOK {
		f.recSt = stOK
	}
	return i
}

// AppendCommand encodes cmd (client side). cmd.Data must be in enc.
//
// Only the fields that are set are written: id if HasID, channel if
// non-empty, data if non-nil (an empty non-nil Data is written as null),
// recover if HasRecover, presence if true, limit if > 0, token and name if
// non-empty. Any enc other than Msgpack encodes JSON.
func AppendCommand(dst []byte, enc Encoding, cmd *Command) []byte {
	if enc == Msgpack {
		return appendCommandMsgpack(dst, cmd)
	}
	dst = append(dst, '{')
	if cmd.HasID {
		dst = append(dst, `"id":`...)
		dst = strconv.AppendUint(dst, cmd.ID, 10)
		dst = append(dst, ',')
	}
	dst = append(dst, `"op":`...)
	dst = appendJSONString(dst, cmd.Op.String())
	if len(cmd.Channel) > 0 {
		dst = append(dst, `,"channel":`...)
		dst = appendJSONString(dst, bytesString(cmd.Channel))
	}
	if cmd.Data != nil {
		dst = append(dst, `,"data":`...)
		dst = appendRawJSON(dst, cmd.Data)
	}
	if cmd.HasRecover {
		dst = append(dst, `,"recover":{"epoch":`...)
		dst = appendJSONString(dst, bytesString(cmd.RecoverEpoch))
		dst = append(dst, `,"offset":`...)
		dst = strconv.AppendUint(dst, cmd.RecoverOffset, 10)
		dst = append(dst, '}')
	}
	if cmd.Presence {
		dst = append(dst, `,"presence":true`...)
	}
	if cmd.Limit > 0 {
		dst = append(dst, `,"limit":`...)
		dst = strconv.AppendInt(dst, int64(cmd.Limit), 10)
	}
	if len(cmd.Token) > 0 {
		dst = append(dst, `,"token":`...)
		dst = appendJSONString(dst, bytesString(cmd.Token))
	}
	if len(cmd.Name) > 0 {
		dst = append(dst, `,"name":`...)
		dst = appendJSONString(dst, bytesString(cmd.Name))
	}
	return append(dst, '}')
}

func appendCommandMsgpack(dst []byte, cmd *Command) []byte {
	n := 1
	for _, set := range [...]bool{cmd.HasID, len(cmd.Channel) > 0, cmd.Data != nil, cmd.HasRecover, cmd.Presence, cmd.Limit > 0,
		len(cmd.Token) > 0, len(cmd.Name) > 0} {
		if set {
			n++
		}
	}
	dst = mpAppendMapHeader(dst, n)
	if cmd.HasID {
		dst = append(dst, "\xa2id"...)
		dst = mpAppendUint(dst, cmd.ID)
	}
	dst = append(dst, "\xa2op"...)
	dst = mpAppendStr(dst, cmd.Op.String())
	if len(cmd.Channel) > 0 {
		dst = append(dst, "\xa7channel"...)
		dst = mpAppendStrBytes(dst, cmd.Channel)
	}
	if cmd.Data != nil {
		dst = append(dst, "\xa4data"...)
		dst = appendRawMsgpack(dst, cmd.Data)
	}
	if cmd.HasRecover {
		dst = append(dst, "\xa7recover\x82\xa5epoch"...)
		dst = mpAppendStrBytes(dst, cmd.RecoverEpoch)
		dst = append(dst, "\xa6offset"...)
		dst = mpAppendUint(dst, cmd.RecoverOffset)
	}
	if cmd.Presence {
		dst = append(dst, "\xa8presence\xc3"...)
	}
	if cmd.Limit > 0 {
		dst = append(dst, "\xa5limit"...)
		dst = mpAppendUint(dst, uint64(cmd.Limit))
	}
	if len(cmd.Token) > 0 {
		dst = append(dst, "\xa5token"...)
		dst = mpAppendStrBytes(dst, cmd.Token)
	}
	if len(cmd.Name) > 0 {
		dst = append(dst, "\xa4name"...)
		dst = mpAppendStrBytes(dst, cmd.Name)
	}
	return dst
}

// appendRawJSON appends an encoded JSON value, null when it is empty.
func appendRawJSON(dst, v []byte) []byte {
	if len(v) == 0 {
		return append(dst, "null"...)
	}
	return append(dst, v...)
}

// appendRawMsgpack appends an encoded msgpack value, nil when it is empty.
func appendRawMsgpack(dst, v []byte) []byte {
	if len(v) == 0 {
		return append(dst, mpNil)
	}
	return append(dst, v...)
}
