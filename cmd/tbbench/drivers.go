package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

// bearerKey is gRPC per-call credentials: an API key in the authorization
// metadata. The echo servers receive it too and ignore it, so that every
// target reads the same request.
type bearerKey string

func (k bearerKey) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(k)}, nil
}

func (bearerKey) RequireTransportSecurity() bool { return false }

// grpcTarget is a set of connections to one gRPC server, each
// authenticating with its own key, and c callers spread over them.
type grpcTarget struct {
	conns []*grpc.ClientConn
}

func dialGRPC(addr string, conns int, keys []string) (*grpcTarget, error) {
	t := &grpcTarget{}
	for i := range conns {
		cc, err := grpc.NewClient(addr,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithPerRPCCredentials(bearerKey(keys[i%len(keys)])))
		if err != nil {
			t.close()
			return nil, err
		}
		cc.Connect()
		t.conns = append(t.conns, cc)
	}
	return t, nil
}

func (t *grpcTarget) close() {
	for _, cc := range t.conns {
		cc.Close()
	}
}

// callers returns c callers of GetToken(req), caller i on connection
// i mod len(conns).
func (t *grpcTarget) callers(c int, req *tokenbrokerv1.GetTokenRequest) []caller {
	out := make([]caller, c)
	for i := range out {
		client := tokenbrokerv1.NewTokenBrokerServiceClient(t.conns[i%len(t.conns)])
		out[i] = func(ctx context.Context) error {
			resp, err := client.GetToken(ctx, req)
			if err == nil && resp.GetToken().GetAccessToken() == "" {
				return errors.New("answer without an access token")
			}
			return err
		}
	}
	return out
}

// httpConn is a minimal keep-alive HTTP/1.1 client on one connection, the
// way wrk drives a server: the request is built once, the answer is parsed
// just enough to find its status and its end. Go's net/http client costs
// several times as much per call, and on one core it would measure itself.
type httpConn struct {
	addr string
	req  []byte
	conn net.Conn
	br   *bufio.Reader
	body []byte
	// lastBody is the body of the last answer (valid until the next call).
	lastBody []byte
}

func newHTTPConn(addr, path, authorization string, body []byte) *httpConn {
	var b bytes.Buffer
	fmt.Fprintf(&b, "POST %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: tbbench\r\nContent-Type: application/json\r\nAccept: application/json\r\n", path, addr)
	if authorization != "" {
		fmt.Fprintf(&b, "Authorization: %s\r\n", authorization)
	}
	fmt.Fprintf(&b, "Content-Length: %d\r\n\r\n", len(body))
	b.Write(body)
	return &httpConn{addr: addr, req: b.Bytes()}
}

func (h *httpConn) close() {
	if h.conn != nil {
		h.conn.Close()
		h.conn = nil
	}
}

// do sends the request and reads the answer; anything but 200 is an error.
func (h *httpConn) do(ctx context.Context) error {
	if h.conn == nil {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", h.addr)
		if err != nil {
			return err
		}
		h.conn, h.br = conn, bufio.NewReaderSize(conn, 16<<10)
	}
	if err := h.conn.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		h.close()
		return err
	}
	if _, err := h.conn.Write(h.req); err != nil {
		h.close()
		return err
	}
	err := h.read()
	if err != nil {
		h.close()
	}
	return err
}

func (h *httpConn) read() error {
	line, err := h.br.ReadSlice('\n')
	if err != nil {
		return err
	}
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) {
		return fmt.Errorf("malformed status line %q", line)
	}
	status := string(line[9:12])
	length, chunked, closing := -1, false, false
	for {
		line, err = h.br.ReadSlice('\n')
		if err != nil {
			return err
		}
		if len(line) <= 2 {
			break
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			if length, err = strconv.Atoi(string(value)); err != nil {
				return fmt.Errorf("content-length %q", value)
			}
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			chunked = bytes.EqualFold(value, []byte("chunked"))
		case bytes.EqualFold(name, []byte("Connection")):
			closing = bytes.EqualFold(value, []byte("close"))
		}
	}
	h.body = h.body[:0]
	switch {
	case chunked:
		if err := h.readChunked(); err != nil {
			return err
		}
	case length >= 0:
		h.body = append(h.body, make([]byte, length)...)
		if _, err := io.ReadFull(h.br, h.body); err != nil {
			return err
		}
	default:
		return errors.New("answer has neither a length nor chunks")
	}
	h.lastBody = h.body
	if closing {
		h.close()
	}
	if status != "200" {
		return fmt.Errorf("status %s: %s", status, bytes.TrimSpace(h.body))
	}
	return nil
}

func (h *httpConn) readChunked() error {
	for {
		line, err := h.br.ReadSlice('\n')
		if err != nil {
			return err
		}
		size, err := strconv.ParseInt(string(bytes.TrimSpace(bytes.SplitN(line, []byte(";"), 2)[0])), 16, 64)
		if err != nil {
			return fmt.Errorf("chunk size %q", line)
		}
		if size == 0 {
			for { // trailers, then the empty line
				line, err = h.br.ReadSlice('\n')
				if err != nil {
					return err
				}
				if len(line) <= 2 {
					return nil
				}
			}
		}
		n := len(h.body)
		h.body = append(h.body, make([]byte, size+2)...)
		if _, err := io.ReadFull(h.br, h.body[n:]); err != nil {
			return err
		}
		h.body = h.body[:n+int(size)]
	}
}

// restCallers returns c callers, each on a connection of its own, that
// POST body to path; caller i sends keys[i mod len(keys)] (none when keys
// is empty).
func restCallers(addr, path string, body []byte, c int, keys []string) ([]caller, func()) {
	conns := make([]*httpConn, c)
	out := make([]caller, c)
	for i := range out {
		auth := ""
		if len(keys) > 0 {
			auth = "Bearer " + keys[i%len(keys)]
		}
		conns[i] = newHTTPConn(addr, path, auth, body)
		out[i] = conns[i].do
	}
	return out, func() {
		for _, h := range conns {
			h.close()
		}
	}
}
