// Command oidcrp is a relying party built on go-oidc
// (github.com/coreos/go-oidc/v3), the OpenID Connect library Go services
// use to accept tokens from an issuer they are configured with.
//
// It discovers -issuer: GET <issuer>/.well-known/openid-configuration over
// HTTPS, trusting only the certificates in -ca, and go-oidc refuses the
// document unless its "issuer" is exactly -issuer. It prints the discovered
// metadata as one JSON line, then reads tokens from stdin, one per line, and
// verifies each with the provider's ID token verifier for -audience: the
// signature against the JWKS at the discovered jwks_uri (go-oidc fetches it
// again when a token names a key it has not seen: a key rotation), the
// algorithm against id_token_signing_alg_values_supported, "iss", "aud"
// and "exp". One JSON line per token: {"ok":true,"subject",...} or
// {"ok":false,"error"}.
//
// The program stays up across tokens, as a service would, so a rotation is
// seen through go-oidc's key cache, not through a fresh start.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
)

type discovered struct {
	Issuer        string   `json:"issuer"`
	JWKSURI       string   `json:"jwks_uri"`
	Algorithms    []string `json:"id_token_signing_alg_values_supported"`
	ResponseTypes []string `json:"response_types_supported"`
	SubjectTypes  []string `json:"subject_types_supported"`
}

type verdict struct {
	OK       bool     `json:"ok"`
	Subject  string   `json:"subject,omitempty"`
	Issuer   string   `json:"issuer,omitempty"`
	Audience []string `json:"audience,omitempty"`
	Expiry   int64    `json:"expiry,omitempty"`
	Error    string   `json:"error,omitempty"`
}

func main() {
	issuer := flag.String("issuer", "", "the issuer URL, exactly as the tokens' iss")
	caFile := flag.String("ca", "", "PEM file of the CA certificates to trust for HTTPS (none: the system's)")
	audience := flag.String("audience", "", "the audience (OIDC client ID) tokens must name")
	timeout := flag.Duration("timeout", 10*time.Second, "timeout of each discovery or key fetch")
	flag.Parse()
	if *issuer == "" || *audience == "" {
		fail("-issuer and -audience are required")
	}

	client := &http.Client{Timeout: *timeout}
	if *caFile != "" {
		pemBytes, err := os.ReadFile(*caFile)
		if err != nil {
			fail(err.Error())
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pemBytes) {
			fail("no certificate in " + *caFile)
		}
		client.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	}
	ctx := oidc.ClientContext(context.Background(), client)

	provider, err := oidc.NewProvider(ctx, *issuer)
	if err != nil {
		fail("discovery: " + err.Error())
	}
	var meta discovered
	if err := provider.Claims(&meta); err != nil {
		fail("discovery document: " + err.Error())
	}
	out := json.NewEncoder(os.Stdout)
	_ = out.Encode(map[string]discovered{"discovered": meta})

	verifier := provider.Verifier(&oidc.Config{ClientID: *audience})
	lines := bufio.NewScanner(os.Stdin)
	lines.Buffer(make([]byte, 64*1024), 1024*1024)
	for lines.Scan() {
		token := lines.Text()
		if token == "" {
			continue
		}
		verifyCtx, cancel := context.WithTimeout(ctx, *timeout)
		idToken, err := verifier.Verify(verifyCtx, token)
		cancel()
		if err != nil {
			_ = out.Encode(verdict{Error: err.Error()})
			continue
		}
		_ = out.Encode(verdict{
			OK:       true,
			Subject:  idToken.Subject,
			Issuer:   idToken.Issuer,
			Audience: idToken.Audience,
			Expiry:   idToken.Expiry.Unix(),
		})
	}
}

func fail(message string) {
	fmt.Fprintln(os.Stderr, "oidcrp:", message)
	os.Exit(1)
}
