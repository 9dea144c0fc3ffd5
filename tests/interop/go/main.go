// Command x509fetch is the go-spiffe interop client of attestd's tests: it
// fetches the caller's X.509 context through go-spiffe's workloadapi (which
// itself checks that each SVID's key matches its certificate), verifies every
// SVID against the fetched bundle with go-spiffe's x509svid.Verify, and
// prints one JSON line per SVID for the test to check.
package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

type result struct {
	SpiffeID string `json:"spiffe_id"`
	Hint     string `json:"hint"`
	Serial   string `json:"serial"`
	NotAfter int64  `json:"not_after"`
	Verified bool   `json:"verified"`
}

func main() {
	addr := flag.String("addr", "", "Workload API address (unix:///path); default $SPIFFE_ENDPOINT_SOCKET")
	timeout := flag.Duration("timeout", 10*time.Second, "overall deadline")
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	var opts []workloadapi.ClientOption
	if *addr != "" {
		opts = append(opts, workloadapi.WithAddr(*addr))
	}
	x509ctx, err := workloadapi.FetchX509Context(ctx, opts...)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fetch: %v\n", err)
		os.Exit(2)
	}
	out := json.NewEncoder(os.Stdout)
	for _, svid := range x509ctx.SVIDs {
		_, _, verifyErr := x509svid.Verify(svid.Certificates, x509ctx.Bundles)
		if verifyErr != nil {
			fmt.Fprintf(os.Stderr, "verify %s: %v\n", svid.ID, verifyErr)
			os.Exit(3)
		}
		leaf := svid.Certificates[0]
		if err := out.Encode(result{
			SpiffeID: svid.ID.String(),
			Hint:     svid.Hint,
			Serial:   hex.EncodeToString(leaf.SerialNumber.Bytes()),
			NotAfter: leaf.NotAfter.Unix(),
			Verified: true,
		}); err != nil {
			fmt.Fprintf(os.Stderr, "encode: %v\n", err)
			os.Exit(4)
		}
	}
}
