package client_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"

	"golang.org/x/oauth2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tokenbroker/tokenbroker/client"
)

// bearer is gRPC per-call credentials: the broker's API key in the
// "authorization: Bearer <key>" metadata. In production, return true from
// RequireTransportSecurity and dial with TLS credentials.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return false }

// providerAPI is a provider's API for the examples: it greets the bearer of
// a token it accepts and answers 401 to the others.
func providerAPI(revoked ...string) *httptest.Server {
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		for _, bad := range revoked {
			ok = ok && token != bad
		}
		if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		fmt.Fprintf(w, "hello, %s", token)
	}))
}

func get(c *http.Client, url string) {
	resp, err := c.Get(url)
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(resp.Status, string(body))
}

func ExampleNewTokenSource() {
	_, brokerAddr, stop := startFakeBroker() // stands in for the broker
	defer stop()
	api := providerAPI()
	defer api.Close()

	conn, err := grpc.NewClient(brokerAddr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(bearer(fakeAPIKey)))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()

	// An oauth2.TokenSource for the provider's client identity; with
	// client.WithAccount it would be a user's account.
	ts := client.NewTokenSource(conn, "sandbox", client.WithScopes("read"))
	// Any oauth2 consumer takes it; the token is fetched once and reused.
	httpClient := oauth2.NewClient(context.Background(), ts)
	get(httpClient, api.URL+"/assets")
	get(httpClient, api.URL+"/assets")
	// Output:
	// 200 OK hello, token-1
	// 200 OK hello, token-1
}

func ExampleNewClient() {
	_, brokerAddr, stop := startFakeBroker() // stands in for the broker
	defer stop()
	// The provider revoked token-1 before it expired.
	api := providerAPI("token-1")
	defer api.Close()

	conn, err := grpc.NewClient(brokerAddr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(bearer(fakeAPIKey)))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()

	ts := client.NewTokenSource(conn, "sandbox")
	// Like oauth2.NewClient, and on a 401 the client asks the broker to
	// replace token-1 and sends the request again with token-2.
	httpClient := client.NewClient(context.Background(), ts)
	get(httpClient, api.URL+"/assets")
	// Output: 200 OK hello, token-2
}
