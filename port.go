// The listening port, kept stable across restarts (README.md, "Flags").
// Contacts and DHT nodes know us by address; a new random port at every
// start (when the one asked for is busy) would make us a stranger to both.
//
// Flow: listenRemembered tries the -listen address; if its port is busy,
// the port saved in DIR/port for that same -listen value; if that is busy
// too, a free port. When it did not get the port asked for, it saves the
// one it got (atomically, like every file kadchat keeps), so the next start
// with the same -listen reuses it.
package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// portFile holds "LISTEN PORT": the -listen value and the port used for it.
const portFile = "port"

// savedPort is what portFile records.
type savedPort struct {
	listen string
	port   uint16
}

// parseSavedPort reads portFile's one line.
func parseSavedPort(b []byte) (savedPort, error) {
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return savedPort{}, fmt.Errorf("port: want \"LISTEN PORT\", got %q", b)
	}
	p, err := strconv.ParseUint(f[1], 10, 16)
	if err != nil || p == 0 {
		return savedPort{}, fmt.Errorf("port: bad port %q", f[1])
	}
	return savedPort{listen: f[0], port: uint16(p)}, nil
}

func (s savedPort) format() []byte {
	return []byte(fmt.Sprintf("%s %d\n", s.listen, s.port))
}

// listenRemembered listens on listen, else on the port remembered for it,
// else on a free port of the same host. busy is listen's port when it was
// taken ("" when we got it), for the "* listening on" line.
func listenRemembered(dir, listen string, log *slog.Logger) (n *Node, busy string, err error) {
	n, err = listenNode(listen, log)
	if err == nil || !errors.Is(err, syscall.EADDRINUSE) {
		return n, "", err
	}
	host, port, serr := net.SplitHostPort(listen)
	if serr != nil {
		return nil, "", fmt.Errorf("port: %w", serr)
	}
	path := filepath.Join(dir, portFile)
	if b, rerr := readFileMax(path, maxSmallFile); rerr == nil {
		if s, perr := parseSavedPort(b); perr == nil && s.listen == listen {
			if n, err = listenNode(net.JoinHostPort(host, strconv.Itoa(int(s.port))), log); err == nil {
				return n, port, nil
			}
		}
	}
	log.Info("port busy, using a free one", "listen", listen)
	if n, err = listenNode(net.JoinHostPort(host, "0"), log); err != nil {
		return nil, "", err
	}
	s := savedPort{listen: listen, port: n.LocalAddr().Port()}
	if werr := writeFileAtomic(path, s.format(), 0o600); werr != nil {
		log.Warn("port: not remembered", "err", werr)
	}
	return n, port, nil
}
