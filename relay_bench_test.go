//go:build unix

package wsauth

import (
	"bytes"
	"io"
	"testing"
)

// BenchmarkRelay is one 128-byte text message from a client to an echo
// upstream and back over loopback TCP, through a watched connection with
// every live rule on, relayed by io.CopyBuffer as reverse_proxy relays it:
// "loops" hands the loops to the watched connection (WriteTo and ReadFrom,
// buffers from a pool while bytes flow), "buffers" hides them so that
// io.CopyBuffer reads and writes with its 32 KiB buffers, as reverse_proxy's
// loops did. The time includes the client's and the upstream's work; the
// difference between the two is the loops'. cpu-µs/op is the process's CPU
// time (user and system) per message, which a wait does not count.
func BenchmarkRelay(b *testing.B) {
	for _, loops := range []bool{true, false} {
		b.Run(map[bool]string{true: "loops", false: "buffers"}[loops], func(b *testing.B) {
			client, front := tcpPair(b)
			back, upstream := tcpPair(b)
			c := &liveConn{h: allRules(b), conn: front, src: front, dst: front}
			wc := (*watchedConn)(c)
			var toUp io.Reader = wc
			var toClient io.Writer = wc
			if !loops {
				toUp, toClient = struct{ io.Reader }{wc}, struct{ io.Writer }{wc}
			}
			go func() { _, _ = io.CopyBuffer(back, toUp, make([]byte, 32<<10)) }()
			go func() { _, _ = io.CopyBuffer(toClient, back, make([]byte, 32<<10)) }()

			payload := bytes.Repeat([]byte("x"), 128)
			msg := clientFrame(true, opText, payload, testMask, 0)
			echo := clientFrame(true, opText, payload, nil, 0)
			go func() { // the upstream: each message back, as a server frame
				buf := make([]byte, len(msg))
				for {
					if _, err := io.ReadFull(upstream, buf); err != nil {
						return
					}
					if _, err := upstream.Write(echo); err != nil {
						return
					}
				}
			}()
			got := make([]byte, len(echo))
			b.ReportAllocs()
			cpu0 := processCPU()
			for b.Loop() {
				if _, err := client.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(client, got); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(processCPU()-cpu0)/1e3/float64(b.N), "cpu-µs/op")
			if !bytes.Equal(got, echo) {
				b.Fatalf("the client got %q", got)
			}
		})
	}
}
