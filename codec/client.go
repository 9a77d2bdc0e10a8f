package codec

import "errors"

// Client side decoding of replies and pushes. It allocates (strings and
// data are copies) but reads the message in one pass, without reflection or
// an intermediate tree.

// ErrFieldType is wrapped by DecodeServerMessage's error when a known field
// has a value of the wrong type.
var ErrFieldType = errors.New("codec: server message field has the wrong type")

// DecodeServerMessage decodes a reply or push (client side).
//
// m is reset first. Strings are copied; publication data (of a pub push and
// of the publications of subscribe and history replies) is copied, whole and
// still encoded, into Publication.JSON or Publication.Msgpack according to
// enc. For a pub push, Channel, Epoch, Offset and Info are also set on m. The
// connected push's (and connect reply's) client, user and name go to m.Info,
// as do the info of join, leave and pub pushes. Unknown fields are ignored and null counts as absent;
// an unknown push kind gives m.Push == PushUnknown.
//
// It returns ErrNotObject when msg is not one well-formed object of enc, and
// an error wrapping ErrFieldType when a known field has a wrong type.
func DecodeServerMessage(enc Encoding, msg []byte, m *ServerMessage) error {
	*m = ServerMessage{}
	var r reader
	switch enc {
	case JSON:
		r = &jreader{b: msg}
	case Msgpack:
		r = &mreader{b: msg}
	default:
		return ErrEncoding
	}
	if !r.isObject() {
		return ErrNotObject
	}
	d := serverDecoder{r: r, enc: enc, m: m}
	if err := r.object(d.field); err != nil {
		return err
	}
	if !r.atEnd() {
		return ErrNotObject
	}
	if m.Push == PushPub {
		m.Pub = Publication{Channel: m.Channel, Epoch: m.Epoch, Offset: m.Offset, Info: m.Info}
		d.setData(&m.Pub, d.data)
	}
	return nil
}

type serverDecoder struct {
	r    reader
	enc  Encoding
	m    *ServerMessage
	data []byte
	pub  *Publication // the publication being decoded
	info *ClientInfo  // the info being decoded
}

func fieldError(key []byte) error {
	return &fieldTypeError{string(key)}
}

type fieldTypeError struct{ key string }

func (e *fieldTypeError) Error() string { return ErrFieldType.Error() + ": " + e.key }
func (e *fieldTypeError) Unwrap() error { return ErrFieldType }

func (d *serverDecoder) setData(p *Publication, data []byte) {
	if d.enc == Msgpack {
		p.Msgpack = data
	} else {
		p.JSON = data
	}
}

func pushKind(s string) PushKind {
	switch s {
	case "connected":
		return PushConnected
	case "pub":
		return PushPub
	case "join":
		return PushJoin
	case "leave":
		return PushLeave
	case "refresh":
		return PushRefresh
	}
	return PushUnknown
}

// field decodes one top-level field.
func (d *serverDecoder) field(key []byte) error {
	r, m := d.r, d.m
	var err error
	switch string(key) {
	case "push":
		var s string
		var ok bool
		if s, ok, err = r.str(); ok {
			m.Push = pushKind(s)
		}
	case "id":
		m.ID, m.HasID, err = r.uint()
	case "ok":
		m.OK, err = r.bool()
	case "error":
		err = r.object(d.errorField)
	case "client":
		m.Info.Client, _, err = r.str()
	case "user":
		m.Info.User, _, err = r.str()
	case "name":
		m.Info.Name, _, err = r.str()
	case "info":
		d.info = &m.Info
		err = r.object(d.infoField)
	case "channel":
		m.Channel, _, err = r.str()
	case "epoch":
		m.Epoch, _, err = r.str()
	case "offset":
		m.Offset, _, err = r.uint()
	case "data":
		d.data, err = r.raw()
	case "recovered":
		m.Recovered, err = r.bool()
	case "truncated":
		m.Truncated, err = r.bool()
	case "count":
		var v uint64
		v, _, err = r.uint()
		m.Count = clampInt(v)
	case "publications":
		m.Publications = []Publication{}
		err = r.array(func() error {
			m.Publications = append(m.Publications, Publication{})
			d.pub = &m.Publications[len(m.Publications)-1]
			return r.object(d.pubField)
		})
	case "clients":
		m.Clients = []ClientInfo{}
		err = r.array(func() error {
			m.Clients = append(m.Clients, ClientInfo{})
			d.info = &m.Clients[len(m.Clients)-1]
			return r.object(d.infoField)
		})
	default:
		return r.skip()
	}
	if err == errType {
		return fieldError(key)
	}
	return err
}

func (d *serverDecoder) errorField(key []byte) error {
	var err error
	switch string(key) {
	case "code":
		d.m.ErrorCode, _, err = d.r.str()
	case "message":
		d.m.ErrorMessage, _, err = d.r.str()
	default:
		return d.r.skip()
	}
	if err == errType {
		return fieldError(append([]byte("error."), key...))
	}
	return err
}

func (d *serverDecoder) infoField(key []byte) error {
	var err error
	switch string(key) {
	case "client":
		d.info.Client, _, err = d.r.str()
	case "user":
		d.info.User, _, err = d.r.str()
	case "name":
		d.info.Name, _, err = d.r.str()
	default:
		return d.r.skip()
	}
	if err == errType {
		return fieldError(append([]byte("info."), key...))
	}
	return err
}

func (d *serverDecoder) pubField(key []byte) error {
	p := d.pub
	var err error
	switch string(key) {
	case "channel":
		p.Channel, _, err = d.r.str()
	case "epoch":
		p.Epoch, _, err = d.r.str()
	case "offset":
		p.Offset, _, err = d.r.uint()
	case "data":
		var data []byte
		data, err = d.r.raw()
		d.setData(p, data)
	case "info":
		d.info = &p.Info
		err = d.r.object(d.infoField)
	default:
		return d.r.skip()
	}
	if err == errType {
		return fieldError(append([]byte("publications."), key...))
	}
	return err
}

// errType is returned by reader methods for a value of the wrong type (the
// value is consumed).
var errType = errors.New("wrong type")

// reader reads values of one encoding in sequence. Methods return
// ErrNotObject for malformed input and errType (value skipped) for a value
// of the wrong type; null is accepted everywhere as the zero value.
type reader interface {
	// object calls fn for each key of the object at the current position;
	// fn must consume the value. A null is an empty object.
	object(fn func(key []byte) error) error
	// array calls fn for each element of the array (fn consumes it).
	array(fn func() error) error
	str() (string, bool, error)
	uint() (uint64, bool, error)
	bool() (bool, error)
	// raw returns a copy of the next complete value (nil for absent).
	raw() ([]byte, error)
	skip() error
	atEnd() bool
	// isObject reports whether an object (not null) comes next.
	isObject() bool
}

// --- JSON reader ---

type jreader struct {
	b []byte
	i int
}

func (r *jreader) peek() byte {
	r.i = skipWS(r.b, r.i)
	if r.i < len(r.b) {
		return r.b[r.i]
	}
	return 0
}

func (r *jreader) atEnd() bool { return skipWS(r.b, r.i) == len(r.b) }

func (r *jreader) isObject() bool { return r.peek() == '{' }

func (r *jreader) skip() error {
	s := jscan{b: r.b}
	i := s.value(skipWS(r.b, r.i), 1)
	if i < 0 {
		return ErrNotObject
	}
	r.i = i
	return nil
}

// null consumes a null if one is next.
func (r *jreader) null() bool {
	if r.peek() == 'n' && len(r.b)-r.i >= 4 && string(r.b[r.i:r.i+4]) == "null" {
		r.i += 4
		return true
	}
	return false
}

// typeErr skips the value and reports errType (or a syntax error).
func (r *jreader) typeErr() error {
	if err := r.skip(); err != nil {
		return err
	}
	return errType
}

func (r *jreader) object(fn func(key []byte) error) error {
	if r.null() {
		return nil
	}
	if r.peek() != '{' {
		return r.typeErr()
	}
	b := r.b
	i := skipWS(b, r.i+1)
	if i < len(b) && b[i] == '}' {
		r.i = i + 1
		return nil
	}
	var kbuf [64]byte
	for {
		if i >= len(b) || b[i] != '"' {
			return ErrNotObject
		}
		end, fl := scanString(b, i+1)
		if end < 0 {
			return ErrNotObject
		}
		key := b[i+1 : end-1]
		if fl&strEscaped != 0 {
			key = appendUnescaped(kbuf[:0], key)
		}
		i = skipWS(b, end)
		if i >= len(b) || b[i] != ':' {
			return ErrNotObject
		}
		r.i = i + 1
		if err := fn(key); err != nil {
			return err
		}
		i = skipWS(b, r.i)
		if i >= len(b) {
			return ErrNotObject
		}
		switch b[i] {
		case ',':
			i = skipWS(b, i+1)
		case '}':
			r.i = i + 1
			return nil
		default:
			return ErrNotObject
		}
	}
}

func (r *jreader) array(fn func() error) error {
	if r.null() {
		return nil
	}
	if r.peek() != '[' {
		return r.typeErr()
	}
	r.i++
	if r.peek() == ']' {
		r.i++
		return nil
	}
	for {
		if err := fn(); err != nil {
			return err
		}
		switch r.peek() {
		case ',':
			r.i++
		case ']':
			r.i++
			return nil
		default:
			return ErrNotObject
		}
	}
}

func (r *jreader) str() (string, bool, error) {
	if r.null() {
		return "", false, nil
	}
	if r.peek() != '"' {
		return "", false, r.typeErr()
	}
	end, fl := scanString(r.b, r.i+1)
	if end < 0 {
		return "", false, ErrNotObject
	}
	raw := r.b[r.i+1 : end-1]
	r.i = end
	if fl&strEscaped != 0 {
		return string(appendUnescaped(make([]byte, 0, len(raw)), raw)), true, nil
	}
	return string(raw), true, nil
}

func (r *jreader) uint() (uint64, bool, error) {
	if r.null() {
		return 0, false, nil
	}
	if c := r.peek(); c < '0' || c > '9' {
		return 0, false, r.typeErr()
	}
	end, kind, _ := scanNumber(r.b, r.i)
	if end < 0 {
		return 0, false, ErrNotObject
	}
	v, ok := parseUintDigits(r.b[r.i:end])
	r.i = end
	if kind != numInt || !ok {
		return 0, false, errType
	}
	return v, true, nil
}

func (r *jreader) bool() (bool, error) {
	if r.null() {
		return false, nil
	}
	b := r.b
	switch r.peek() {
	case 't':
		if len(b)-r.i >= 4 && string(b[r.i:r.i+4]) == "true" {
			r.i += 4
			return true, nil
		}
		return false, ErrNotObject
	case 'f':
		if len(b)-r.i >= 5 && string(b[r.i:r.i+5]) == "false" {
			r.i += 5
			return false, nil
		}
		return false, ErrNotObject
	}
	return false, r.typeErr()
}

func (r *jreader) raw() ([]byte, error) {
	start := skipWS(r.b, r.i)
	r.i = start
	if err := r.skip(); err != nil {
		return nil, err
	}
	return append([]byte(nil), r.b[start:r.i]...), nil
}

// --- msgpack reader ---

type mreader struct {
	b []byte
	i int
}

func (r *mreader) atEnd() bool { return r.i == len(r.b) }

func (r *mreader) isObject() bool {
	_, _, ok := mpMapLen(r.b, r.i)
	return ok
}

func (r *mreader) skip() error {
	s := mscan{b: r.b}
	i := s.value(r.i, 1)
	if i < 0 {
		return ErrNotObject
	}
	r.i = i
	return nil
}

func (r *mreader) null() bool {
	if r.i < len(r.b) && r.b[r.i] == mpNil {
		r.i++
		return true
	}
	return false
}

func (r *mreader) typeErr() error {
	if err := r.skip(); err != nil {
		return err
	}
	return errType
}

func (r *mreader) object(fn func(key []byte) error) error {
	if r.null() {
		return nil
	}
	n, next, ok := mpMapLen(r.b, r.i)
	if !ok {
		return r.typeErr()
	}
	if next < 0 {
		return ErrNotObject
	}
	r.i = next
	for ; n > 0; n-- {
		key, next, isStr := mpStr(r.b, r.i)
		if next < 0 {
			return ErrNotObject
		}
		if !isStr {
			if err := r.skip(); err != nil {
				return err
			}
			if err := r.skip(); err != nil {
				return err
			}
			continue
		}
		r.i = next
		if err := fn(key); err != nil {
			return err
		}
	}
	return nil
}

func (r *mreader) array(fn func() error) error {
	if r.null() {
		return nil
	}
	n, next, ok := mpArrayLen(r.b, r.i)
	if !ok {
		return r.typeErr()
	}
	if next < 0 || n > len(r.b)-next { // each element takes a byte at least
		return ErrNotObject
	}
	r.i = next
	for ; n > 0; n-- {
		if err := fn(); err != nil {
			return err
		}
	}
	return nil
}

func (r *mreader) str() (string, bool, error) {
	if r.null() {
		return "", false, nil
	}
	s, next, ok := mpStr(r.b, r.i)
	if !ok {
		if next < 0 {
			return "", false, ErrNotObject
		}
		return "", false, r.typeErr()
	}
	if next < 0 {
		return "", false, ErrNotObject
	}
	r.i = next
	return string(s), true, nil
}

func (r *mreader) uint() (uint64, bool, error) {
	v, next, kind := mpInt(r.b, r.i)
	switch kind {
	case mpIntOK:
		r.i = next
		return v, true, nil
	case mpIntNil:
		r.i = next
		return 0, false, nil
	case mpIntNeg:
		r.i = next
		return 0, false, errType
	}
	if next < 0 {
		return 0, false, ErrNotObject
	}
	return 0, false, r.typeErr()
}

func (r *mreader) bool() (bool, error) {
	if r.i < len(r.b) {
		switch r.b[r.i] {
		case mpTrue:
			r.i++
			return true, nil
		case mpFalse, mpNil:
			r.i++
			return false, nil
		}
	}
	return false, r.typeErr()
}

func (r *mreader) raw() ([]byte, error) {
	start := r.i
	if err := r.skip(); err != nil {
		return nil, err
	}
	return append([]byte(nil), r.b[start:r.i]...), nil
}
