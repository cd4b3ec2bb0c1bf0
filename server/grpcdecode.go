package server

import (
	"sync"
	"sync/atomic"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	encodingproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

// requestCodec is the gRPC server's codec: the proto codec, except that a
// request of one of this API's unary methods that cannot be unmarshalled
// (invalid wire data, a string that is not UTF-8) is reset and set aside
// rather than failed. grpc-go answers a message it cannot unmarshal with
// Internal, as if the server had failed, and before any interceptor runs;
// set aside, the call reaches the unary interceptor chain, which answers
// InvalidArgument and takes the request back (see undecodable). Requests
// of streaming methods fail as grpc-go fails them.
type requestCodec struct{ encoding.CodecV2 }

func newRequestCodec() requestCodec {
	return requestCodec{encoding.GetCodecV2(encodingproto.Name)}
}

// unaryRequests are the request types of the API's unary methods: the
// ones requestCodec sets aside.
var unaryRequests = func() map[protoreflect.FullName]bool {
	m := map[protoreflect.FullName]bool{}
	for _, f := range []protoreflect.FileDescriptor{tokenbrokerv1.File_tokenbroker_v1_token_broker_proto, tokenbrokerv1.File_tokenbroker_v1_admin_proto} {
		for i := range f.Services().Len() {
			methods := f.Services().Get(i).Methods()
			for j := range methods.Len() {
				if md := methods.Get(j); !md.IsStreamingClient() && !md.IsStreamingServer() {
					m[md.Input().FullName()] = true
				}
			}
		}
	}
	return m
}()

// undecodableRequests holds the requests requestCodec set aside until the
// interceptor chain takes them; undecodablePending counts them, so that
// the chain looks only when there is one.
var (
	undecodableRequests sync.Map // proto.Message → struct{}
	undecodablePending  atomic.Int64
)

func (c requestCodec) Unmarshal(data mem.BufferSlice, v any) error {
	err := c.CodecV2.Unmarshal(data, v)
	if err == nil {
		return nil
	}
	m, ok := v.(proto.Message)
	if !ok || !unaryRequests[m.ProtoReflect().Descriptor().FullName()] {
		return err
	}
	proto.Reset(m)
	undecodablePending.Add(1)
	undecodableRequests.Store(m, struct{}{})
	return nil
}

// undecodable takes req back from requestCodec: InvalidArgument when it
// could not be unmarshalled, nil otherwise.
func undecodable(req any) error {
	if undecodablePending.Load() == 0 {
		return nil
	}
	m, ok := req.(proto.Message)
	if !ok {
		return nil
	}
	if _, bad := undecodableRequests.LoadAndDelete(m); !bad {
		return nil
	}
	undecodablePending.Add(-1)
	return status.Errorf(codes.InvalidArgument, "the request is not a valid %s", proto.MessageName(m))
}
