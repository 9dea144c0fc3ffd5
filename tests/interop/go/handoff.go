package main

// The attack modes of the interop client: a process connects to the
// Workload API and hands the connection to another process, which then asks
// for identities over it. attestd must never answer with an identity that
// belongs to anything but the process that connected, as it is when it asks.

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

type handoffOptions struct {
	addr        string
	childBinary string        // program that receives the connection (default: this one)
	linger      time.Duration // how long the connecting process stays after handing off
	execPath    string        // if set, the connecting process then execs this program
	childDelay  time.Duration // how long the receiver waits before asking
}

type parentReport struct {
	ParentPid int `json:"parent_pid"`
	ChildPid  int `json:"child_pid"`
}

type childReport struct {
	OK        bool     `json:"ok"`
	Code      string   `json:"code"`
	Message   string   `json:"message"`
	SpiffeIDs []string `json:"spiffe_ids"`
}

// handoff connects, starts the receiver with the connection as fd 3, lingers,
// then exits or execs -exec.
func handoff(opts handoffOptions) error {
	conn, err := net.Dial("unix", strings.TrimPrefix(strings.TrimPrefix(opts.addr, "unix://"), "unix:"))
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	file, err := conn.(*net.UnixConn).File()
	if err != nil {
		return err
	}
	binary := opts.childBinary
	if binary == "" {
		if binary, err = os.Executable(); err != nil {
			return err
		}
	}
	child := exec.Command(binary, "-mode", "child", "-child-delay", opts.childDelay.String())
	child.ExtraFiles = []*os.File{file}
	child.Stdout = os.Stdout
	child.Stderr = os.Stderr
	if err := child.Start(); err != nil {
		return fmt.Errorf("start receiver: %w", err)
	}
	if err := json.NewEncoder(os.Stdout).Encode(parentReport{ParentPid: os.Getpid(), ChildPid: child.Process.Pid}); err != nil {
		return err
	}
	time.Sleep(opts.linger)
	if opts.execPath != "" {
		// The receiver keeps its copy; this process keeps none across exec
		// (Go opens sockets close-on-exec), so afterwards only the receiver
		// holds the connection while this pid runs another binary.
		return syscall.Exec(opts.execPath, []string{opts.execPath, "30"}, os.Environ())
	}
	return nil
}

// receive asks for X.509-SVIDs over the inherited connection on fd 3 and
// reports what it got.
func receive(delay time.Duration) error {
	time.Sleep(delay)
	conn, err := net.FileConn(os.NewFile(3, "workload-api"))
	if err != nil {
		return fmt.Errorf("inherited fd: %w", err)
	}
	dialer := func(context.Context, string) (net.Conn, error) { return conn, nil }
	client, err := grpc.NewClient("passthrough:///inherited",
		grpc.WithContextDialer(dialer),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
	report := childReport{}
	stream, err := workload.NewSpiffeWorkloadAPIClient(client).FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	var response *workload.X509SVIDResponse
	if err == nil {
		response, err = stream.Recv()
	}
	if err != nil {
		st := status.Convert(err)
		report.Code, report.Message = st.Code().String(), st.Message()
	} else {
		report.OK = true
		for _, svid := range response.Svids {
			report.SpiffeIDs = append(report.SpiffeIDs, svid.SpiffeId)
		}
	}
	return json.NewEncoder(os.Stdout).Encode(report)
}

type watchEvent struct {
	Event     string   `json:"event"`
	SpiffeIDs []string `json:"spiffe_ids,omitempty"`
	Code      string   `json:"code,omitempty"`
}

// watchThenSetuid opens an X.509-SVID stream, drops to uid after the first
// message, and reports every later message until the stream ends: attestd
// must notice that the process no longer has the credentials it connected
// with.
func watchThenSetuid(addr string, uid int) error {
	client, err := grpc.NewClient("unix://"+strings.TrimPrefix(strings.TrimPrefix(addr, "unix://"), "unix:"),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
	stream, err := workload.NewSpiffeWorkloadAPIClient(client).FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err != nil {
		return err
	}
	out := json.NewEncoder(os.Stdout)
	for dropped := false; ; {
		response, err := stream.Recv()
		if err != nil {
			return out.Encode(watchEvent{Event: "end", Code: status.Code(err).String()})
		}
		ids := []string{}
		for _, svid := range response.Svids {
			ids = append(ids, svid.SpiffeId)
		}
		if err := out.Encode(watchEvent{Event: "svid", SpiffeIDs: ids}); err != nil {
			return err
		}
		if !dropped {
			if err := syscall.Setuid(uid); err != nil {
				return fmt.Errorf("setuid: %w", err)
			}
			dropped = true
			if err := out.Encode(watchEvent{Event: "setuid"}); err != nil {
				return err
			}
		}
	}
}
