package fsm

import (
	"github.com/hashicorp/go-msgpack/v2/codec"
)

// payloadHandle is the msgpack configuration of command payloads. It is set once here
// and never changed; the codec keeps only its own concurrency-safe type cache in it.
var payloadHandle = func() *codec.MsgpackHandle {
	h := &codec.MsgpackHandle{WriteExt: true}
	h.Canonical = true
	h.MaxInitLen = 4096
	return h
}()

// marshalPayload appends the msgpack encoding of p to buf.
func marshalPayload(buf []byte, p any) ([]byte, error) {
	var out []byte
	if err := codec.NewEncoderBytes(&out, payloadHandle).Encode(p); err != nil {
		return nil, err
	}
	return append(buf, out...), nil
}

// unmarshalPayload decodes a msgpack payload into p.
func unmarshalPayload(b []byte, p any) error {
	return codec.NewDecoderBytes(b, payloadHandle).Decode(p)
}
