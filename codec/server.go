package codec

import "strconv"

// Server encoders: replies and pushes appended to caller-owned buffers, in
// the field order of PROTOCOL.md. They allocate nothing beyond growing dst.
// A publication's data is copied raw from p.JSON or p.Msgpack (whichever enc
// is); empty data is written as null. Any enc other than Msgpack encodes
// JSON. Strings are escaped as described in jsonwrite.go; invalid UTF-8 in
// them is written as U+FFFD in JSON and as is in msgpack.

// AppendConnected appends {"push":"connected","client","user"}, with
// "name" after user when info.Name is not empty.
func AppendConnected(dst []byte, enc Encoding, info ClientInfo) []byte {
	if enc == Msgpack {
		if info.Name != "" {
			dst = append(dst, 0x84)
		} else {
			dst = append(dst, 0x83)
		}
		dst = append(dst, "\xa4push\xa9connected"...)
		return mpAppendIdentity(dst, info)
	}
	dst = append(dst, `{"push":"connected",`...)
	dst = appendIdentityJSON(dst, info)
	return append(dst, '}')
}

// AppendConnectOK appends the reply to a successful connect:
// {"id","ok":true,"client","user"}, with "name" when info.Name is not empty.
func AppendConnectOK(dst []byte, enc Encoding, id uint64, info ClientInfo) []byte {
	n := 4
	if info.Name != "" {
		n++
	}
	dst = appendOKHead(dst, enc, id, n)
	if enc == Msgpack {
		return mpAppendIdentity(dst, info)
	}
	dst = append(dst, ',')
	dst = appendIdentityJSON(dst, info)
	return append(dst, '}')
}

// AppendRefresh appends the refresh push, {"push":"refresh"}: the
// connection's token expires soon and the server wants a refresh command.
func AppendRefresh(dst []byte, enc Encoding) []byte {
	if enc == Msgpack {
		return append(dst, "\x81\xa4push\xa7refresh"...)
	}
	return append(dst, `{"push":"refresh"}`...)
}

// appendIdentityJSON appends "client":C,"user":U and ,"name":N when the
// name is not empty (the fields of an info object, without braces).
func appendIdentityJSON(dst []byte, info ClientInfo) []byte {
	dst = append(dst, `"client":`...)
	dst = appendJSONString(dst, info.Client)
	dst = append(dst, `,"user":`...)
	dst = appendJSONString(dst, info.User)
	if info.Name != "" {
		dst = append(dst, `,"name":`...)
		dst = appendJSONString(dst, info.Name)
	}
	return dst
}

// mpAppendIdentity appends the client, user and (when not empty) name
// entries of a map whose header the caller wrote.
func mpAppendIdentity(dst []byte, info ClientInfo) []byte {
	dst = append(dst, "\xa6client"...)
	dst = mpAppendStr(dst, info.Client)
	dst = append(dst, "\xa4user"...)
	dst = mpAppendStr(dst, info.User)
	if info.Name != "" {
		dst = append(dst, "\xa4name"...)
		dst = mpAppendStr(dst, info.Name)
	}
	return dst
}

// AppendPub appends the pub push of p:
// {"push":"pub","channel","epoch","offset","data","info":{"client","user"}}
// (info with "name" when p.Info.Name is not empty).
func AppendPub(dst []byte, enc Encoding, p *Publication) []byte {
	if enc == Msgpack {
		dst = append(dst, "\x86\xa4push\xa3pub"...)
		return mpAppendPubFields(dst, p)
	}
	dst = append(dst, `{"push":"pub",`...)
	return appendPubFieldsJSON(dst, p)
}

// appendPubJSON appends a publication object of a subscribe or history
// reply: {"channel","epoch","offset","data","info"}.
func appendPubJSON(dst []byte, p *Publication) []byte {
	return appendPubFieldsJSON(append(dst, '{'), p)
}

// appendPubFieldsJSON appends the publication's fields and the closing '}'.
func appendPubFieldsJSON(dst []byte, p *Publication) []byte {
	dst = append(dst, `"channel":`...)
	dst = appendJSONString(dst, p.Channel)
	dst = append(dst, `,"epoch":`...)
	dst = appendJSONString(dst, p.Epoch)
	dst = append(dst, `,"offset":`...)
	dst = strconv.AppendUint(dst, p.Offset, 10)
	dst = append(dst, `,"data":`...)
	dst = appendRawJSON(dst, p.JSON)
	dst = append(dst, `,"info":`...)
	dst = appendInfoJSON(dst, p.Info)
	return append(dst, '}')
}

// appendInfoJSON appends an info object: {"client","user"}, with "name"
// when info.Name is not empty.
func appendInfoJSON(dst []byte, info ClientInfo) []byte {
	dst = appendIdentityJSON(append(dst, '{'), info)
	return append(dst, '}')
}

// mpAppendPubFields appends the five publication fields (the map header is
// the caller's).
func mpAppendPubFields(dst []byte, p *Publication) []byte {
	dst = append(dst, "\xa7channel"...)
	dst = mpAppendStr(dst, p.Channel)
	dst = append(dst, "\xa5epoch"...)
	dst = mpAppendStr(dst, p.Epoch)
	dst = append(dst, "\xa6offset"...)
	dst = mpAppendUint(dst, p.Offset)
	dst = append(dst, "\xa4data"...)
	dst = appendRawMsgpack(dst, p.Msgpack)
	dst = append(dst, "\xa4info"...)
	return mpAppendInfo(dst, p.Info)
}

// mpAppendInfo appends an info map: client, user and, when not empty, name.
func mpAppendInfo(dst []byte, info ClientInfo) []byte {
	if info.Name != "" {
		dst = append(dst, 0x83)
	} else {
		dst = append(dst, 0x82)
	}
	return mpAppendIdentity(dst, info)
}

// AppendJoin appends a join push; AppendLeave a leave push:
// {"push":"join","channel","info":{"client","user"}} (info with "name"
// when it has one).
func AppendJoin(dst []byte, enc Encoding, channel string, info ClientInfo) []byte {
	return appendPresencePush(dst, enc, "join", channel, info)
}

// AppendLeave appends a leave push: {"push":"leave","channel","info"}.
func AppendLeave(dst []byte, enc Encoding, channel string, info ClientInfo) []byte {
	return appendPresencePush(dst, enc, "leave", channel, info)
}

func appendPresencePush(dst []byte, enc Encoding, kind, channel string, info ClientInfo) []byte {
	if enc == Msgpack {
		dst = append(dst, "\x83\xa4push"...)
		dst = mpAppendStr(dst, kind)
		dst = append(dst, "\xa7channel"...)
		dst = mpAppendStr(dst, channel)
		dst = append(dst, "\xa4info"...)
		return mpAppendInfo(dst, info)
	}
	dst = append(dst, `{"push":"`...)
	dst = append(dst, kind...)
	dst = append(dst, `","channel":`...)
	dst = appendJSONString(dst, channel)
	dst = append(dst, `,"info":`...)
	dst = appendInfoJSON(dst, info)
	return append(dst, '}')
}

// appendOKHead appends the start of a success reply with n fields in all:
// {"id":id,"ok":true (JSON, no closing brace) or the map header, id and ok.
func appendOKHead(dst []byte, enc Encoding, id uint64, n int) []byte {
	if enc == Msgpack {
		dst = append(dst, 0x80|byte(n), 0xa2, 'i', 'd')
		dst = mpAppendUint(dst, id)
		return append(dst, "\xa2ok\xc3"...)
	}
	dst = append(dst, `{"id":`...)
	dst = strconv.AppendUint(dst, id, 10)
	return append(dst, `,"ok":true`...)
}

// AppendOK appends {"id":id,"ok":true} (unsubscribe, ping).
func AppendOK(dst []byte, enc Encoding, id uint64) []byte {
	dst = appendOKHead(dst, enc, id, 2)
	if enc == Msgpack {
		return dst
	}
	return append(dst, '}')
}

// AppendPublishOK appends {"id","ok":true,"offset"}.
func AppendPublishOK(dst []byte, enc Encoding, id, offset uint64) []byte {
	dst = appendOKHead(dst, enc, id, 3)
	if enc == Msgpack {
		dst = append(dst, "\xa6offset"...)
		return mpAppendUint(dst, offset)
	}
	dst = append(dst, `,"offset":`...)
	dst = strconv.AppendUint(dst, offset, 10)
	return append(dst, '}')
}

// AppendSubscribeOK appends {"id","ok":true,"epoch","offset","recovered","publications"}.
// publications is always present (an empty array when pubs is empty); nil
// entries of pubs are skipped.
func AppendSubscribeOK(dst []byte, enc Encoding, id uint64, pos StreamPosition, recovered bool, pubs []*Publication) []byte {
	dst = appendOKHead(dst, enc, id, 6)
	if enc == Msgpack {
		dst = mpAppendPosition(dst, pos)
		dst = append(dst, "\xa9recovered"...)
		dst = mpAppendBool(dst, recovered)
		return mpAppendPubs(dst, pubs)
	}
	dst = appendPositionJSON(dst, pos)
	dst = append(dst, `,"recovered":`...)
	dst = appendJSONBool(dst, recovered)
	dst = appendPubsJSON(dst, pubs)
	return append(dst, '}')
}

// AppendHistoryOK appends {"id","ok":true,"epoch","offset","publications"}.
// publications is always present; nil entries of pubs are skipped.
func AppendHistoryOK(dst []byte, enc Encoding, id uint64, pos StreamPosition, pubs []*Publication) []byte {
	dst = appendOKHead(dst, enc, id, 5)
	if enc == Msgpack {
		dst = mpAppendPosition(dst, pos)
		return mpAppendPubs(dst, pubs)
	}
	dst = appendPositionJSON(dst, pos)
	dst = appendPubsJSON(dst, pubs)
	return append(dst, '}')
}

// AppendHistoryReply is AppendHistoryOK with the optional "truncated" field:
// when truncated is set it appends
// {"id","ok":true,"epoch","offset","publications","truncated":true}, telling
// the client that older publications within its limit were left out to keep
// the reply under the server's reply size bound; when it is not, the reply
// is exactly AppendHistoryOK's.
func AppendHistoryReply(dst []byte, enc Encoding, id uint64, pos StreamPosition, pubs []*Publication, truncated bool) []byte {
	if !truncated {
		return AppendHistoryOK(dst, enc, id, pos, pubs)
	}
	dst = appendOKHead(dst, enc, id, 6)
	if enc == Msgpack {
		dst = mpAppendPosition(dst, pos)
		dst = mpAppendPubs(dst, pubs)
		return append(dst, "\xa9truncated\xc3"...)
	}
	dst = appendPositionJSON(dst, pos)
	dst = appendPubsJSON(dst, pubs)
	return append(dst, `,"truncated":true}`...)
}

func appendPositionJSON(dst []byte, pos StreamPosition) []byte {
	dst = append(dst, `,"epoch":`...)
	dst = appendJSONString(dst, pos.Epoch)
	dst = append(dst, `,"offset":`...)
	return strconv.AppendUint(dst, pos.Offset, 10)
}

func mpAppendPosition(dst []byte, pos StreamPosition) []byte {
	dst = append(dst, "\xa5epoch"...)
	dst = mpAppendStr(dst, pos.Epoch)
	dst = append(dst, "\xa6offset"...)
	return mpAppendUint(dst, pos.Offset)
}

// appendPubsJSON appends ,"publications":[...].
func appendPubsJSON(dst []byte, pubs []*Publication) []byte {
	dst = append(dst, `,"publications":[`...)
	first := true
	for _, p := range pubs {
		if p == nil {
			continue
		}
		if !first {
			dst = append(dst, ',')
		}
		first = false
		dst = appendPubJSON(dst, p)
	}
	return append(dst, ']')
}

func mpAppendPubs(dst []byte, pubs []*Publication) []byte {
	n := 0
	for _, p := range pubs {
		if p != nil {
			n++
		}
	}
	dst = append(dst, "\xacpublications"...)
	dst = mpAppendArrayHeader(dst, n)
	for _, p := range pubs {
		if p != nil {
			dst = mpAppendPubFields(append(dst, 0x85), p)
		}
	}
	return dst
}

// AppendPresenceOK appends {"id","ok":true,"count","clients":[{"client","user"}]}.
func AppendPresenceOK(dst []byte, enc Encoding, id uint64, clients []ClientInfo) []byte {
	dst = appendOKHead(dst, enc, id, 4)
	if enc == Msgpack {
		dst = append(dst, "\xa5count"...)
		dst = mpAppendUint(dst, uint64(len(clients)))
		dst = append(dst, "\xa7clients"...)
		dst = mpAppendArrayHeader(dst, len(clients))
		for _, c := range clients {
			dst = mpAppendInfo(dst, c)
		}
		return dst
	}
	dst = append(dst, `,"count":`...)
	dst = strconv.AppendUint(dst, uint64(len(clients)), 10)
	dst = append(dst, `,"clients":[`...)
	for k, c := range clients {
		if k > 0 {
			dst = append(dst, ',')
		}
		dst = appendInfoJSON(dst, c)
	}
	return append(dst, "]}"...)
}

// AppendError appends {"id","error":{"code","message"}}; id omitted unless hasID.
func AppendError(dst []byte, enc Encoding, id uint64, hasID bool, code, message string) []byte {
	if enc == Msgpack {
		if hasID {
			dst = append(dst, "\x82\xa2id"...)
			dst = mpAppendUint(dst, id)
		} else {
			dst = append(dst, 0x81)
		}
		dst = append(dst, "\xa5error\x82\xa4code"...)
		dst = mpAppendStr(dst, code)
		dst = append(dst, "\xa7message"...)
		return mpAppendStr(dst, message)
	}
	dst = append(dst, '{')
	if hasID {
		dst = append(dst, `"id":`...)
		dst = strconv.AppendUint(dst, id, 10)
		dst = append(dst, ',')
	}
	dst = append(dst, `"error":{"code":`...)
	dst = appendJSONString(dst, code)
	dst = append(dst, `,"message":`...)
	dst = appendJSONString(dst, message)
	return append(dst, "}}"...)
}
