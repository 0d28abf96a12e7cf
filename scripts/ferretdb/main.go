// Command ferretdb runs FerretDB v1 (a MongoDB wire-protocol server) embedded, for the
// backend integration tests: scripts/services.sh builds it (scripts/lib/mongo.sh) and
// starts it on a free port with a throwaway SQLite data directory.
//
//	ferretdb -listen-addr 127.0.0.1:PORT -data-dir DIR    serve until SIGTERM/SIGINT
//	ferretdb -handler postgresql -postgresql-url URL ...   the PostgreSQL backend instead
//	ferretdb -probe 127.0.0.1:PORT [-timeout 30s]         wait until `hello` and `ping`
//	                                                       answer ok, print the server's version
//	ferretdb -version                                      print this binary's version
//
// Every server flag also reads an environment variable (FERRETDB_LISTEN_ADDR,
// FERRETDB_DATA_DIR, FERRETDB_HANDLER, FERRETDB_POSTGRESQL_URL, FERRETDB_SQLITE_OPTIONS,
// FERRETDB_LOG_LEVEL); a flag wins.
//
// Why a module of our own and not `go install .../cmd/ferretdb@v1.24.2`: that command's
// main panics at start, because its build/version/version.txt is generated and not in
// the module zip. With our own main module, build/version skips reading version.txt
// (it only does so when the main module is FerretDB itself), so nothing panics; the
// FerretDB version reported to clients (buildInfo.ferretdbVersion) is then filled in
// below from the binary's own build info (the required module version, v1.24.2).
package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/FerretDB/FerretDB/build/version"
	"github.com/FerretDB/FerretDB/ferretdb"
	"github.com/FerretDB/wire"
	"github.com/FerretDB/wire/wirebson"
	"github.com/FerretDB/wire/wireclient"
	_ "modernc.org/sqlite" // already linked by FerretDB's SQLite backend; -version asks it its version
)

const ferretModule = "github.com/FerretDB/FerretDB"

func env(name, def string) string {
	if v, ok := os.LookupEnv(name); ok && v != "" {
		return v
	}
	return def
}

// ferretVersion is the FerretDB module version this binary was built with.
func ferretVersion() string { return depVersion(ferretModule) }

// sqliteVersion is the version of the SQLite library linked in (what the sqlite backend runs).
func sqliteVersion() string {
	db, err := sql.Open("sqlite", ":memory:")
	if err != nil {
		return "unknown"
	}
	defer db.Close()
	var v string
	if err = db.QueryRow("SELECT sqlite_version()").Scan(&v); err != nil {
		return "unknown"
	}
	return v
}

// depVersion is the version of module path linked into this binary.
func depVersion(path string) string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == path {
				if d.Replace != nil && d.Replace.Version != "" {
					return d.Replace.Version
				}
				return d.Version
			}
		}
	}
	return "unknown"
}

func main() {
	listen := flag.String("listen-addr", env("FERRETDB_LISTEN_ADDR", "127.0.0.1:27017"), "TCP address to listen on")
	dataDir := flag.String("data-dir", env("FERRETDB_DATA_DIR", "ferretdb-data"), "SQLite data directory (created if missing)")
	handler := flag.String("handler", env("FERRETDB_HANDLER", "sqlite"), "backend: sqlite or postgresql")
	pgURL := flag.String("postgresql-url", env("FERRETDB_POSTGRESQL_URL", ""), "PostgreSQL URL for -handler postgresql")
	sqliteOpts := flag.String("sqlite-options", env("FERRETDB_SQLITE_OPTIONS", "_pragma=synchronous(off)"),
		"URL query added to the SQLite directory URI (default: no fsync, the data is throwaway; "+
			"do not use mode=memory: FerretDB v1.24.2 then deadlocks on the first upsert)")
	logLevel := flag.String("log-level", env("FERRETDB_LOG_LEVEL", "warn"), "debug, info, warn or error")
	probe := flag.String("probe", "", "HOST:PORT: wait until a server answers hello and ping, print its version, exit")
	timeout := flag.Duration("timeout", 30*time.Second, "how long -probe waits")
	showVersion := flag.Bool("version", false, "print the FerretDB version and exit")
	flag.Parse()

	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "ferretdb: unexpected arguments %q\n", flag.Args())
		os.Exit(2)
	}

	if *showVersion {
		fmt.Printf("FerretDB %s (embedded; backends: sqlite = SQLite %s via modernc.org/sqlite %s, postgresql; %s)\n",
			ferretVersion(), sqliteVersion(), depVersion("modernc.org/sqlite"), goVersion())
		return
	}

	if *probe != "" {
		if err := runProbe(*probe, *timeout); err != nil {
			fmt.Fprintf(os.Stderr, "ferretdb -probe: %s\n", err)
			os.Exit(1)
		}
		return
	}

	if err := serve(*listen, *dataDir, *handler, *pgURL, *sqliteOpts, *logLevel); err != nil {
		fmt.Fprintf(os.Stderr, "ferretdb: %s\n", err)
		os.Exit(1)
	}
}

func goVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		return bi.GoVersion
	}
	return "go unknown"
}

func serve(listen, dataDir, handler, pgURL, sqliteOpts, logLevel string) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(logLevel)); err != nil {
		return fmt.Errorf("-log-level: %w", err)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(logger)

	version.Get().Version = ferretVersion()

	cfg := &ferretdb.Config{
		Listener: ferretdb.ListenerConfig{TCP: listen},
		Logger:   logger,
		Handler:  handler,
	}
	switch handler {
	case "sqlite":
		abs, err := filepath.Abs(dataDir)
		if err != nil {
			return err
		}
		if err = os.MkdirAll(abs, 0o755); err != nil {
			return err
		}
		// A directory URI: one SQLite file per database; the trailing slash is required.
		cfg.SQLiteURL = "file:" + abs + "/"
		if sqliteOpts != "" {
			cfg.SQLiteURL += "?" + sqliteOpts
		}
	case "postgresql":
		if pgURL == "" {
			return errors.New("-handler postgresql needs -postgresql-url")
		}
		cfg.PostgreSQLURL = pgURL
	default:
		return fmt.Errorf("-handler must be sqlite or postgresql, got %q", handler)
	}

	f, err := ferretdb.New(cfg)
	if err != nil {
		return err
	}

	// First SIGTERM/SIGINT: stop accepting, give open connections FerretDB's short grace
	// period, close the backend (SQLite files are flushed). A second one exits at once.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		<-ctx.Done()
		stop() // restore default handling: a second signal kills
	}()

	where := cfg.SQLiteURL
	if handler == "postgresql" {
		where = "PostgreSQL"
	}
	fmt.Fprintf(os.Stderr, "FerretDB %s (%s backend, %s) listening on %s\n", version.Get().Version, handler, where, listen)
	err = f.Run(ctx)
	fmt.Fprintln(os.Stderr, "FerretDB stopped")
	return err
}

// runProbe waits until the server at addr answers `hello` with ok (and isWritablePrimary)
// and `ping`, then prints one line: FerretDB version, MongoDB version it claims, backend.
func runProbe(addr string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	quiet := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))

	var lastErr error
	for {
		line, err := probeOnce(ctx, addr, quiet)
		if err == nil {
			fmt.Println(line)
			return nil
		}
		lastErr = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s did not answer within %s: %w", addr, timeout, lastErr)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func probeOnce(ctx context.Context, addr string, l *slog.Logger) (string, error) {
	conn, err := wireclient.Connect(ctx, "mongodb://"+addr+"/", l)
	if err != nil {
		return "", err
	}
	defer conn.Close()

	hello, err := command(ctx, conn, "hello", int32(1))
	if err != nil {
		return "", err
	}
	if w, _ := hello["isWritablePrimary"].(bool); !w {
		return "", errors.New("hello: not a writable primary")
	}
	if _, err = command(ctx, conn, "ping", int32(1)); err != nil {
		return "", err
	}
	bi, err := command(ctx, conn, "buildInfo", int32(1))
	if err != nil {
		return "", err
	}
	fv, _ := bi["ferretdbVersion"].(string)
	mv, _ := bi["version"].(string)
	line := fmt.Sprintf("FerretDB %s (MongoDB %s compatible)", fv, mv)
	// The backend and its version are only in the startup warnings ("Powered by FerretDB
	// v1.24.2 and SQLite 3.46.0."), and only once a database was opened; before that the
	// line names FerretDB alone (the binary's -version names the backend library).
	if sw, err := command(ctx, conn, "getLog", "startupWarnings"); err == nil {
		if arr, ok := sw["log"].(*wirebson.Array); ok && arr.Len() > 0 {
			// Each entry is a MongoDB-style JSON log line; its "msg" is the text.
			if first, ok := arr.Get(0).(string); ok {
				var entry struct {
					Msg string `json:"msg"`
				}
				if json.Unmarshal([]byte(first), &entry) == nil && entry.Msg != "" {
					first = entry.Msg
				}
				line += "; " + first
			}
		}
	}
	return line, nil
}

// command runs {name: arg, $db: "admin"} and returns the top-level fields of an ok reply.
func command(ctx context.Context, conn *wireclient.Conn, name string, arg any) (map[string]any, error) {
	_, body, err := conn.Request(ctx, wire.MustOpMsg(name, arg, "$db", "admin"))
	if err != nil {
		return nil, err
	}
	msg, ok := body.(*wire.OpMsg)
	if !ok {
		return nil, fmt.Errorf("%s: unexpected reply %T", name, body)
	}
	raw, err := msg.RawDocument()
	if err != nil {
		return nil, err
	}
	doc, err := raw.DecodeDeep()
	if err != nil {
		return nil, err
	}
	out := make(map[string]any, doc.Len())
	for _, k := range doc.FieldNames() {
		out[k] = doc.Get(k)
	}
	if out["ok"] != 1.0 {
		msg, _ := out["errmsg"].(string)
		return nil, fmt.Errorf("%s failed: %s", name, strings.TrimSpace(msg))
	}
	return out, nil
}
