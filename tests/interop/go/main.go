// Command spiffeclient is the go-spiffe interop client of attestd's tests.
//
// -mode x509 (default): fetches the caller's X.509 context through
// go-spiffe's workloadapi (which itself checks that each SVID's key matches
// its certificate), verifies every SVID against the fetched bundle with
// x509svid.Verify, and prints one JSON line per SVID. With -at, the chain
// is verified at that Unix time (a daemon whose clock a test stepped).
//
// -mode jwt: fetches a JWT-SVID for -audience, validates it through the
// Workload API, then offline against the JWT bundles fetched from it with
// jwtsvid.ParseAndValidate, and prints one JSON line.
//
// -mode jwt-validate: validates the given -token offline with
// jwtsvid.ParseAndValidate against the JWT bundles fetched from the Workload
// API, for the first -audience, and prints one JSON line with its subject
// and every claim (attestd's task tokens carry extra claims).
//
// -mode handoff / child / watch-setuid: the attacks of attestd's attestation
// tests (see handoff.go).
// -mode files: spiffe-helper's job, done with go-spiffe's X509Source (the
// stand-in for spiffe-helper, which the Go module proxy here does not
// serve): on every new SVID, writes svid.pem (chain), svid_key.pem (PKCS#8,
// 0600) and svid_bundle.pem into -dir as spiffe-helper does, prints one JSON
// line, and exits after -updates distinct SVIDs.
package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

type x509Result struct {
	SpiffeID  string `json:"spiffe_id"`
	Hint      string `json:"hint"`
	Serial    string `json:"serial"`
	NotBefore int64  `json:"not_before"`
	NotAfter  int64  `json:"not_after"`
	Verified  bool   `json:"verified"`
}

type jwtResult struct {
	SpiffeID       string   `json:"spiffe_id"`
	Audience       []string `json:"audience"`
	Token          string   `json:"token"`
	OnlineSubject  string   `json:"online_subject"`
	OfflineSubject string   `json:"offline_subject"`
}

func main() {
	addr := flag.String("addr", "", "Workload API address (unix:///path); default $SPIFFE_ENDPOINT_SOCKET")
	mode := flag.String("mode", "x509", "x509 or jwt")
	audience := flag.String("audience", "", "comma-separated audiences (jwt and jwt-validate modes)")
	token := flag.String("token", "", "the JWT-SVID to validate (jwt-validate mode)")
	timeout := flag.Duration("timeout", 10*time.Second, "overall deadline")
	var handoffOpts handoffOptions
	flag.StringVar(&handoffOpts.childBinary, "child-binary", "", "handoff: program that receives the connection")
	flag.DurationVar(&handoffOpts.linger, "linger", 0, "handoff: how long the connecting process stays")
	flag.StringVar(&handoffOpts.execPath, "exec", "", "handoff: program the connecting process then execs")
	flag.DurationVar(&handoffOpts.childDelay, "child-delay", 0, "handoff/child: wait before asking")
	setuid := flag.Int("setuid", 65534, "watch-setuid: uid to drop to after the first message")
	dir := flag.String("dir", "", "where to write the files (files mode)")
	updates := flag.Int("updates", 1, "distinct SVIDs to write before exiting (files mode)")
	at := flag.Int64("at", 0, "x509: verify at this Unix time instead of now")
	flag.Parse()
	handoffOpts.addr = *addr

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	var opts []workloadapi.ClientOption
	if *addr != "" {
		opts = append(opts, workloadapi.WithAddr(*addr))
	}
	var err error
	switch *mode {
	case "x509":
		var verify []x509svid.VerifyOption
		if *at != 0 {
			verify = append(verify, x509svid.WithTime(time.Unix(*at, 0)))
		}
		err = fetchX509(ctx, opts, verify)
	case "jwt":
		err = fetchJWT(ctx, opts, strings.Split(*audience, ","))
	case "jwt-validate":
		err = validateJWT(ctx, opts, *token, strings.Split(*audience, ","))
	case "handoff":
		err = handoff(handoffOpts)
	case "child":
		err = receive(handoffOpts.childDelay)
	case "watch-setuid":
		err = watchThenSetuid(*addr, *setuid)
	case "files":
		err = writeFiles(ctx, opts, *dir, *updates)
	default:
		err = fmt.Errorf("unknown mode %q", *mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
}

func fetchX509(ctx context.Context, opts []workloadapi.ClientOption, verify []x509svid.VerifyOption) error {
	x509ctx, err := workloadapi.FetchX509Context(ctx, opts...)
	if err != nil {
		return fmt.Errorf("fetch: %w", err)
	}
	out := json.NewEncoder(os.Stdout)
	for _, svid := range x509ctx.SVIDs {
		if _, _, err := x509svid.Verify(svid.Certificates, x509ctx.Bundles, verify...); err != nil {
			return fmt.Errorf("verify %s: %w", svid.ID, err)
		}
		leaf := svid.Certificates[0]
		if err := out.Encode(x509Result{
			SpiffeID:  svid.ID.String(),
			Hint:      svid.Hint,
			Serial:    hex.EncodeToString(leaf.SerialNumber.Bytes()),
			NotBefore: leaf.NotBefore.Unix(),
			NotAfter:  leaf.NotAfter.Unix(),
			Verified:  true,
		}); err != nil {
			return err
		}
	}
	return nil
}

func fetchJWT(ctx context.Context, opts []workloadapi.ClientOption, audience []string) error {
	client, err := workloadapi.New(ctx, opts...)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer client.Close()
	params := jwtsvid.Params{Audience: audience[0], ExtraAudiences: audience[1:]}
	svid, err := client.FetchJWTSVID(ctx, params)
	if err != nil {
		return fmt.Errorf("fetch: %w", err)
	}
	token := svid.Marshal()
	online, err := client.ValidateJWTSVID(ctx, token, audience[0])
	if err != nil {
		return fmt.Errorf("validate online: %w", err)
	}
	bundles, err := client.FetchJWTBundles(ctx)
	if err != nil {
		return fmt.Errorf("fetch bundles: %w", err)
	}
	offline, err := jwtsvid.ParseAndValidate(token, bundles, audience)
	if err != nil {
		return fmt.Errorf("validate offline: %w", err)
	}
	return json.NewEncoder(os.Stdout).Encode(jwtResult{
		SpiffeID:       svid.ID.String(),
		Audience:       svid.Audience,
		Token:          token,
		OnlineSubject:  online.ID.String(),
		OfflineSubject: offline.ID.String(),
	})
}

type validatedResult struct {
	SpiffeID string         `json:"spiffe_id"`
	Audience []string       `json:"audience"`
	Claims   map[string]any `json:"claims"`
}

func validateJWT(ctx context.Context, opts []workloadapi.ClientOption, token string, audience []string) error {
	bundles, err := workloadapi.FetchJWTBundles(ctx, opts...)
	if err != nil {
		return fmt.Errorf("fetch bundles: %w", err)
	}
	svid, err := jwtsvid.ParseAndValidate(token, bundles, audience[:1])
	if err != nil {
		return fmt.Errorf("validate offline: %w", err)
	}
	return json.NewEncoder(os.Stdout).Encode(validatedResult{
		SpiffeID: svid.ID.String(),
		Audience: svid.Audience,
		Claims:   svid.Claims,
	})
}

type filesResult struct {
	SpiffeID string `json:"spiffe_id"`
	Serial   string `json:"serial"`
}

func writeFiles(ctx context.Context, opts []workloadapi.ClientOption, dir string, updates int) error {
	source, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(opts...))
	if err != nil {
		return fmt.Errorf("x509 source: %w", err)
	}
	defer source.Close()
	out := json.NewEncoder(os.Stdout)
	lastSerial := ""
	for written := 0; written < updates; {
		svid, err := source.GetX509SVID()
		if err != nil {
			return fmt.Errorf("svid: %w", err)
		}
		serial := hex.EncodeToString(svid.Certificates[0].SerialNumber.Bytes())
		if serial != lastSerial {
			if err := writeX509(source, svid, dir); err != nil {
				return err
			}
			if err := out.Encode(filesResult{SpiffeID: svid.ID.String(), Serial: serial}); err != nil {
				return err
			}
			lastSerial = serial
			written++
			continue
		}
		select {
		case <-source.Updated():
		case <-ctx.Done():
			return fmt.Errorf("waiting for a rotation: %w", ctx.Err())
		}
	}
	return nil
}

func writeX509(source *workloadapi.X509Source, svid *x509svid.SVID, dir string) error {
	bundle, err := source.GetX509BundleForTrustDomain(svid.ID.TrustDomain())
	if err != nil {
		return fmt.Errorf("bundle: %w", err)
	}
	certs, key, err := svid.Marshal()
	if err != nil {
		return fmt.Errorf("marshal svid: %w", err)
	}
	bundlePEM, err := bundle.Marshal()
	if err != nil {
		return fmt.Errorf("marshal bundle: %w", err)
	}
	for _, file := range []struct {
		name     string
		contents []byte
		mode     os.FileMode
	}{
		{"svid.pem", certs, 0o644},
		{"svid_key.pem", key, 0o600},
		{"svid_bundle.pem", bundlePEM, 0o644},
	} {
		if err := os.WriteFile(filepath.Join(dir, file.name), file.contents, file.mode); err != nil {
			return err
		}
	}
	return nil
}
