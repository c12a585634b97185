package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Mount is one bind mount inside a container's mount namespace.
type Mount struct {
	Source   string `json:"source"`
	Target   string `json:"target"`
	ReadOnly bool   `json:"readOnly,omitempty"`
}

// helperSpec is what the `container-init` helper (this binary re-executed
// inside the container's namespaces) receives on fd 3.
type helperSpec struct {
	Hostname   string   `json:"hostname,omitempty"`
	Mounts     []Mount  `json:"mounts,omitempty"`
	WorkingDir string   `json:"workingDir,omitempty"`
	Setpriv    string   `json:"setpriv"`
	SetprivArg []string `json:"setprivArgs"`
	Argv       []string `json:"argv"`
}

// ProcSpec describes a container process.
type ProcSpec struct {
	// Netns is the pod's network namespace name (/run/netns/<Netns>); empty: the host's.
	Netns string
	// Hostname sets the process' UTS hostname (a private UTS namespace); empty: the host's.
	Hostname   string
	Mounts     []Mount
	Identity   Identity
	Argv       []string // Argv[0] is an absolute path
	Env        []string
	WorkingDir string
	// Log receives stdout and stderr (appended).
	Log string
}

// Proc is a started container process: the leader of its own session.
type Proc struct {
	Pid       int
	StartTime uint64 // /proc/<pid>/stat starttime, to recognise the pid later
	Started   time.Time
	cmd       *exec.Cmd
	done      chan struct{}
	exitCode  int
	signaled  bool
}

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// ExitCode is valid after Done: the exit status, or 128+signal.
func (p *Proc) ExitCode() int { return p.exitCode }

// Tools are the external programs containers are started with.
type Tools struct {
	Nsenter, Setpriv, IP, Iptables, Modprobe string
	// Self is this binary, as /proc/<pid>/exe: still executable after a rebuild replaced the file.
	Self string
}

// FindTools locates the util-linux and iproute2 tools.
func FindTools() (Tools, error) {
	t := Tools{Self: fmt.Sprintf("/proc/%d/exe", os.Getpid())}
	var missing []string
	for _, x := range []struct {
		name string
		dst  *string
	}{{"nsenter", &t.Nsenter}, {"setpriv", &t.Setpriv}, {"ip", &t.IP}, {"iptables", &t.Iptables}} {
		p, err := exec.LookPath(x.name)
		if err != nil {
			missing = append(missing, x.name)
			continue
		}
		*x.dst = p
	}
	t.Modprobe, _ = exec.LookPath("modprobe")
	if len(missing) > 0 {
		return t, fmt.Errorf("missing tools: %s (Debian: apt-get install util-linux iproute2 iptables)", strings.Join(missing, ", "))
	}
	return t, nil
}

// StartError is a failure to start a container process (the kubelet's
// StartError / RunContainerError): exit code 128.
type StartError struct{ Msg string }

func (e *StartError) Error() string { return e.Msg }

// StartProcess starts a container process in its own session: nsenter into
// the pod's netns, then this binary's `container-init` in a new mount (and
// UTS) namespace, which bind-mounts the volumes and execs setpriv with the
// container's identity, which execs the command. The returned Proc is the
// command itself (nsenter, the helper and setpriv exec in place). It returns
// once the helper has set up the mounts, or with a *StartError.
func StartProcess(t Tools, s ProcSpec) (*Proc, error) {
	if len(s.Argv) == 0 {
		return nil, &StartError{Msg: "no command specified"}
	}
	spec := helperSpec{
		Hostname:   s.Hostname,
		Mounts:     s.Mounts,
		WorkingDir: s.WorkingDir,
		Setpriv:    t.Setpriv,
		SetprivArg: s.Identity.SetprivArgs(),
		Argv:       s.Argv,
	}
	specJSON, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(s.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return nil, fmt.Errorf("opening log: %w", err)
	}
	defer logf.Close()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return nil, err
	}
	defer devnull.Close()
	specR, specW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer specR.Close()
	errR, errW, err := os.Pipe()
	if err != nil {
		specW.Close()
		return nil, err
	}
	defer errR.Close()

	var cmd *exec.Cmd
	if s.Netns != "" {
		cmd = exec.Command(t.Nsenter, "--net=/run/netns/"+s.Netns, "--", t.Self, helperCommand)
	} else {
		cmd = exec.Command(t.Self, helperCommand)
	}
	cmd.Env = s.Env
	cmd.Stdin = devnull
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.ExtraFiles = []*os.File{specR, errW} // fd 3, fd 4
	flags := uintptr(unix.CLONE_NEWNS)
	if s.Hostname != "" {
		flags |= unix.CLONE_NEWUTS
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Cloneflags: flags}
	if err := cmd.Start(); err != nil {
		specW.Close()
		errW.Close()
		return nil, &StartError{Msg: fmt.Sprintf("starting the container process: %v", err)}
	}
	errW.Close()
	// The child has its own copy; holding ours would let a write block
	// forever if the child died before reading.
	specR.Close()
	p := &Proc{Pid: cmd.Process.Pid, Started: time.Now(), cmd: cmd, done: make(chan struct{})}
	p.StartTime, _ = procStartTime(p.Pid)
	go func() {
		err := cmd.Wait()
		p.exitCode = exitCodeOf(cmd.ProcessState, err)
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			p.signaled = true
		}
		close(p.done)
	}()
	_, werr := specW.Write(specJSON)
	specW.Close()
	// The helper writes helperReady and then closes fd 4 by exec'ing setpriv
	// (close-on-exec), or writes why it failed. Nothing at all: it never ran
	// (nsenter failed, see the container log).
	out, _ := io.ReadAll(io.LimitReader(errR, 64<<10))
	if string(out) != helperReady || werr != nil {
		p.Signal(syscall.SIGKILL)
		<-p.done
		msg := strings.TrimSpace(strings.TrimPrefix(string(out), helperReady))
		switch {
		case msg != "":
		case werr != nil:
			msg = fmt.Sprintf("sending the spec to the helper: %v", werr)
		default:
			msg = fmt.Sprintf("entering the pod's namespaces failed (exit code %d): %s", p.exitCode, tailFile(s.Log, 3, 512))
		}
		return nil, &StartError{Msg: msg}
	}
	return p, nil
}

// helperReady is what the helper reports just before it execs setpriv.
const helperReady = "ready"

func exitCodeOf(ps *os.ProcessState, err error) int {
	if ps == nil {
		if err != nil {
			return 128
		}
		return 0
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok {
		if ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ws.ExitStatus()
	}
	return ps.ExitCode()
}

// Signal sends sig to every process of the container's session.
func (p *Proc) Signal(sig syscall.Signal) {
	select {
	case <-p.done:
		// The leader is gone; what is left of its session gets the signal too.
	default:
		_ = syscall.Kill(-p.Pid, sig)
	}
	KillSession(p.Pid, p.StartTime, sig)
}

// procStat reads session id and start time of pid from /proc/<pid>/stat.
func procStat(pid int) (session int, start uint64, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, 0, errors.New("malformed stat")
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state): session is field 6, starttime field 22.
	if len(f) < 20 {
		return 0, 0, errors.New("short stat")
	}
	session, _ = strconv.Atoi(f[3])
	start, _ = strconv.ParseUint(f[19], 10, 64)
	return session, start, nil
}

func procStartTime(pid int) (uint64, error) {
	_, st, err := procStat(pid)
	return st, err
}

// KillSession signals every process whose session id is sid. A pid number is
// not reused while a process still has it as session id, so when the leader
// is gone the members are ours; when a process with pid sid lives but started
// at another time than leaderStart, the number was reused and nothing is sent.
func KillSession(sid int, leaderStart uint64, sig syscall.Signal) int {
	if sid <= 1 {
		return 0
	}
	if _, st, err := procStat(sid); err == nil && leaderStart != 0 && st != leaderStart {
		return 0
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		s, _, err := procStat(pid)
		if err != nil || s != sid {
			continue
		}
		if syscall.Kill(pid, sig) == nil {
			n++
		}
	}
	return n
}

// SessionAlive reports whether any process of session sid remains.
func SessionAlive(sid int, leaderStart uint64) bool {
	if _, st, err := procStat(sid); err == nil {
		return leaderStart == 0 || st == leaderStart
	}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if s, _, err := procStat(pid); err == nil && s == sid {
			return true
		}
	}
	return false
}

// ResolveCommand finds argv[0] as an exec in the container would: a name
// without '/' is looked up in the container's PATH; a relative path is
// relative to the working directory. The file must be an executable regular file.
func ResolveCommand(argv0, pathEnv, workingDir string) (string, error) {
	if argv0 == "" {
		return "", fmt.Errorf("empty command")
	}
	check := func(p string) error {
		st, err := os.Stat(p)
		if err != nil {
			return err
		}
		if st.IsDir() {
			return fmt.Errorf("%s is a directory", p)
		}
		if st.Mode()&0o111 == 0 {
			return fmt.Errorf("%s: permission denied (not executable)", p)
		}
		return nil
	}
	if strings.Contains(argv0, "/") {
		p := argv0
		if !filepath.IsAbs(p) {
			p = filepath.Join(workingDir, p)
		}
		if err := check(p); err != nil {
			return "", fmt.Errorf("exec: %q: %v", argv0, err)
		}
		return p, nil
	}
	if pathEnv == "" {
		pathEnv = defaultPath
	}
	for _, dir := range filepath.SplitList(pathEnv) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, argv0)
		if !filepath.IsAbs(p) {
			p = filepath.Join(workingDir, p)
		}
		if check(p) == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("exec: %q: executable file not found in $PATH", argv0)
}

// defaultPath is the PATH container runtimes give a process whose image sets none.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// ExecInContainer runs argv inside the namespaces of a running container
// (pid): network, mount and UTS, as the container's identity, with env and
// working directory. Used for exec probes, exec hooks and `kubectl exec`.
func ExecInContainer(t Tools, pid int, hostNetwork bool, id Identity, env []string, workingDir string, argv []string) *exec.Cmd {
	args := []string{"--target", strconv.Itoa(pid), "--mount", "--uts"}
	if !hostNetwork {
		args = append(args, "--net")
	}
	if workingDir != "" {
		args = append(args, "--wd="+workingDir)
	}
	args = append(args, "--", t.Setpriv)
	args = append(args, id.SetprivArgs()...)
	args = append(args, "--")
	args = append(args, argv...)
	cmd := exec.Command(t.Nsenter, args...)
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	return cmd
}
