package codec_test

import (
	"errors"
	"fmt"

	"github.com/fanout-dev/fanout/codec"
)

func ExampleDecodeCommand() {
	msg := []byte(`{"id":7,"op":"publish","channel":"chat:lobby","data":{"text":"hi"}}`)
	var cmd codec.Command
	if err := codec.DecodeCommand(codec.JSON, msg, &cmd); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("%s id=%d channel=%s data=%s\n", cmd.Op, cmd.ID, cmd.Channel, cmd.Data)

	// A valid object that is not a valid command: an error reply, which
	// carries the id when it could be read.
	err := codec.DecodeCommand(codec.JSON, []byte(`{"id":8,"op":"subscribe","channel":"no spaces"}`), &cmd)
	var ce *codec.CommandError
	if errors.As(err, &ce) {
		fmt.Printf("%s\n", codec.AppendError(nil, codec.JSON, cmd.ID, cmd.HasID, ce.Code, ce.Message))
	}

	// Not an object at all: the connection is closed with 1007.
	fmt.Println(codec.DecodeCommand(codec.JSON, []byte(`[1,2]`), &cmd) == codec.ErrNotObject)
	// Output:
	// publish id=7 channel=chat:lobby data={"text":"hi"}
	// {"id":8,"error":{"code":"bad_request","message":"invalid channel name: 1-255 characters of A-Z a-z 0-9 _ - : . /"}}
	// true
}

func ExampleAppendPub() {
	data := []byte(`{"text":"hi"}`)
	mp, _ := codec.Transcode(nil, codec.JSON, codec.Msgpack, data)
	p := &codec.Publication{
		Channel: "chat:lobby", Epoch: "e1", Offset: 42,
		Info: codec.ClientInfo{Client: "c-1", User: "alice"},
		JSON: data, Msgpack: mp,
	}
	buf := make([]byte, 0, 256)
	buf = codec.AppendPub(buf, codec.JSON, p)
	fmt.Printf("%s\n", buf)
	buf = codec.AppendPub(buf[:0], codec.Msgpack, p)
	fmt.Printf("% x\n", buf[:18])
	// Output:
	// {"push":"pub","channel":"chat:lobby","epoch":"e1","offset":42,"data":{"text":"hi"},"info":{"client":"c-1","user":"alice"}}
	// 86 a4 70 75 73 68 a3 70 75 62 a7 63 68 61 6e 6e 65 6c
}

func ExampleTranscode() {
	mp, err := codec.Transcode(nil, codec.JSON, codec.Msgpack, []byte(`{"n":[1,-2,2.5,1.0],"s":"é\n","ok":true,"x":null}`))
	fmt.Printf("% x %v\n", mp, err)
	js, err := codec.Transcode(nil, codec.Msgpack, codec.JSON, mp)
	fmt.Printf("%s %v\n", js, err)

	// bin becomes a base64 string; ext has no JSON form.
	js, _ = codec.Transcode(nil, codec.Msgpack, codec.JSON, []byte{0xc4, 0x03, 'a', 'b', 'c'})
	fmt.Printf("%s\n", js)
	_, err = codec.Transcode(nil, codec.Msgpack, codec.JSON, []byte{0xd4, 0x01, 0x00})
	fmt.Println(errors.Is(err, codec.ErrUnsupported))
	// Output:
	// 84 a1 6e 94 01 fe cb 40 04 00 00 00 00 00 00 01 a1 73 a3 c3 a9 0a a2 6f 6b c3 a1 78 c0 <nil>
	// {"n":[1,-2,2.5,1],"s":"é\n","ok":true,"x":null} <nil>
	// "YWJj"
	// true
}
