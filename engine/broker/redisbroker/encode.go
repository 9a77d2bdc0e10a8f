package redisbroker

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strconv"

	"github.com/fanout-dev/fanout/codec"
)

// A publication travels and is stored as a blob: a version byte, then
// client, user, name, JSON data and msgpack data, each a uvarint length
// and its bytes. Both encodings are carried so that no node transcodes.
const blobVersion = 1

var errBadBlob = errors.New("redisbroker: malformed publication blob")

func appendBlob(b []byte, p *codec.Publication) []byte {
	b = append(b, blobVersion)
	for _, s := range [...][]byte{[]byte(p.Info.Client), []byte(p.Info.User), []byte(p.Info.Name), p.JSON, p.Msgpack} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	return b
}

// decodeBlob fills p from b. The data slices alias b (capped, so nobody
// appends into a neighbour): b must not be modified afterwards.
func decodeBlob(b []byte, p *codec.Publication) error {
	if len(b) == 0 || b[0] != blobVersion {
		return errBadBlob
	}
	b = b[1:]
	var parts [5][]byte
	for i := range parts {
		n, k := binary.Uvarint(b)
		if k <= 0 || n > uint64(len(b)-k) {
			return errBadBlob
		}
		parts[i] = b[k : k+int(n) : k+int(n)]
		b = b[k+int(n):]
	}
	if len(b) != 0 {
		return errBadBlob
	}
	p.Info = codec.ClientInfo{Client: string(parts[0]), User: string(parts[1]), Name: string(parts[2])}
	p.JSON, p.Msgpack = parts[3], parts[4]
	return nil
}

// parseMessage splits a pub/sub message "<offset>:<epoch>:<blob>".
func parseMessage(m []byte) (offset uint64, epoch string, blob []byte, err error) {
	i := bytes.IndexByte(m, ':')
	if i < 0 {
		return 0, "", nil, errBadBlob
	}
	offset, err = strconv.ParseUint(string(m[:i]), 10, 64)
	if err != nil {
		return 0, "", nil, errBadBlob
	}
	rest := m[i+1:]
	j := bytes.IndexByte(rest, ':')
	if j < 0 {
		return 0, "", nil, errBadBlob
	}
	return offset, string(rest[:j]), rest[j+1:], nil
}
