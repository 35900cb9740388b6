package checkpoint

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// Version is the format this build writes.
const Version = "v2"

// FileName is the checkpoint's name inside the state directory.
const FileName = "checkpoint.json"

// ErrCorrupt is returned for a checkpoint that cannot be read as any known
// version, or whose checksum does not match.
var ErrCorrupt = errors.New("checkpoint is corrupt")

// ErrUnknownVersion is returned for a checkpoint of a version this build
// does not know, e.g. one written by a newer plugin before a downgrade.
var ErrUnknownVersion = errors.New("checkpoint has an unknown version")

// file is the v2 format: the claims with a checksum over their encoding, so
// that a torn or hand-edited file is detected rather than half-trusted.
type file struct {
	Version  string          `json:"version"`
	Checksum uint32          `json:"checksum"`
	Claims   json.RawMessage `json:"claims"`
}

// Store reads and writes the checkpoint in one directory.
type Store struct {
	dir        string
	beforeSave func(*Checkpoint) error
	// seen identifies the files as this store last read or wrote them.
	seen fileID

	// last is the checkpoint as persisted (file plus journal); nil when
	// unknown, and then the next Save writes the whole file.
	last *Checkpoint
	// journal is open for appending; journalGood is its intact length.
	journal      *os.File
	journalGood  int64
	records      int
	compactEvery int
}

// fileID tells whether another process replaced the file: every Save
// renames a new file into place.
type fileID struct {
	file, journal fileStat
}

type fileStat struct {
	exists bool
	ino    uint64
	size   int64
	mtime  int64
}

func statFile(path string) (fileStat, error) {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return fileStat{}, nil
	}
	if err != nil {
		return fileStat{}, fmt.Errorf("stat %s: %w", path, err)
	}
	st := fileStat{exists: true, size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.ino = sys.Ino
	}
	return st, nil
}

func (s *Store) stat() (fileID, error) {
	file, err := statFile(s.Path())
	if err != nil {
		return fileID{}, err
	}
	journal, err := statFile(s.journalPath())
	return fileID{file: file, journal: journal}, err
}

// Changed reports whether the file is no longer the one this store last
// read or wrote, e.g. because another plugin instance (during a rolling
// update) wrote it.
func (s *Store) Changed() (bool, error) {
	id, err := s.stat()
	return id != s.seen, err
}

// StoreOption configures a Store.
type StoreOption func(*Store)

// WithSaveFault calls fault before each Save; an error from it fails the
// Save before anything is written, as a full or failing disk would. For
// tests.
func WithSaveFault(fault func(*Checkpoint) error) StoreOption {
	return func(s *Store) { s.beforeSave = fault }
}

// NewStore returns a store in dir, creating dir.
func NewStore(dir string, opts ...StoreOption) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create checkpoint directory %s: %w", dir, err)
	}
	s := &Store{dir: dir, compactEvery: defaultCompactEvery}
	for _, o := range opts {
		o(s)
	}
	return s, nil
}

// Exists reports whether the checkpoint file exists. Start-up needs to
// know: a missing checkpoint beside existing MIG instances means a changed
// or unmounted state directory more often than a new node.
func (s *Store) Exists() (bool, error) {
	id, err := s.stat()
	return id.file.exists || id.journal.exists, err
}

// Path is the checkpoint file's path.
func (s *Store) Path() string { return filepath.Join(s.dir, FileName) }

// Load reads the checkpoint and replays its journal; a missing file is an
// empty checkpoint. Files of older versions are upgraded in memory (the
// next compaction writes them in the current version).
func (s *Store) Load() (*Checkpoint, error) {
	s.closeJournal()
	id, err := s.stat()
	if err != nil {
		return nil, err
	}
	cp := New()
	data, err := os.ReadFile(s.Path())
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("read checkpoint %s: %w", s.Path(), err)
	default:
		if cp, err = Decode(data); err != nil {
			return nil, fmt.Errorf("checkpoint %s: %w", s.Path(), err)
		}
	}
	good, err := replay(s.journalPath(), cp)
	if err != nil {
		return nil, err
	}
	s.seen, s.last, s.journalGood, s.records = id, cp.DeepCopy(), good, 0
	return cp, nil
}

// Decode parses a checkpoint of any known version.
func Decode(data []byte) (*Checkpoint, error) {
	var head struct {
		Version string `json:"version"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	switch head.Version {
	case "v1":
		return decodeV1(data)
	case Version:
	case "":
		return nil, fmt.Errorf("%w: no version field", ErrCorrupt)
	default:
		return nil, fmt.Errorf("%w %q (this build reads v1 and v2); refusing to guess, so no device is touched", ErrUnknownVersion, head.Version)
	}
	var f file
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	if sum := crc32.ChecksumIEEE(f.Claims); sum != f.Checksum {
		return nil, fmt.Errorf("%w: checksum %08x, want %08x", ErrCorrupt, sum, f.Checksum)
	}
	cp := New()
	if err := json.Unmarshal(f.Claims, &cp.Claims); err != nil {
		return nil, fmt.Errorf("%w: claims: %w", ErrCorrupt, err)
	}
	if cp.Claims == nil {
		cp.Claims = map[string]*Claim{}
	}
	for uid, c := range cp.Claims {
		if c == nil || c.UID != uid {
			return nil, fmt.Errorf("%w: claim entry %q does not carry its own UID", ErrCorrupt, uid)
		}
	}
	return cp, nil
}

// Encode returns the current version's encoding of the checkpoint.
func Encode(cp *Checkpoint) ([]byte, error) {
	claims, err := json.Marshal(cp.Claims)
	if err != nil {
		return nil, fmt.Errorf("encode checkpoint: %w", err)
	}
	return json.Marshal(file{Version: Version, Checksum: crc32.ChecksumIEEE(claims), Claims: claims})
}

// Save makes cp the persisted checkpoint: a crash at any point leaves
// either the old or the new one, never a mix. It appends one synced record
// of what changed to the journal; every so many records it then writes the
// whole file atomically and empties the journal. The journal's records are
// all in that file by then, so replaying them over it (when a crash lost
// the emptying) changes nothing.
func (s *Store) Save(cp *Checkpoint) error {
	if s.beforeSave != nil {
		if err := s.beforeSave(cp); err != nil {
			return fmt.Errorf("write checkpoint %s: %w", s.Path(), err)
		}
	}
	if s.last == nil {
		// After a failed write: what is on disk now.
		if err := s.reload(); err != nil {
			return err
		}
	}
	rec := diff(s.last, cp)
	if rec == nil {
		// Nothing changed, but an empty checkpoint must exist too: a
		// missing one means something else at start.
		id, err := s.stat()
		if err != nil || id.file.exists || id.journal.exists {
			return err
		}
		if err := s.writeFile(cp); err != nil {
			return err
		}
		s.seen, err = s.stat()
		return err
	}
	if err := s.appendRecord(rec); err != nil {
		return err
	}
	s.last = cp.DeepCopy()
	if s.records >= s.compactEvery {
		// The change is durable already; a failed compaction is tried
		// again on the next Save.
		if err := s.writeFile(cp); err == nil {
			_ = s.emptyJournal()
		}
	}
	var err error
	s.seen, err = s.stat()
	return err
}

// reload reads what is on disk as the last persisted state.
func (s *Store) reload() error {
	seen := s.seen
	if _, err := s.Load(); err != nil {
		return err
	}
	// Not a read the caller saw: Changed must still report another
	// writer's change.
	s.seen = seen
	return nil
}

// writeFile writes the whole checkpoint atomically: temp file, fsync,
// rename, directory fsync.
func (s *Store) writeFile(cp *Checkpoint) error {
	data, err := Encode(cp)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(s.dir, FileName+".*.tmp")
	if err != nil {
		return fmt.Errorf("write checkpoint: %w", err)
	}
	defer func() { _ = os.Remove(tmp.Name()) }()
	if _, err := tmp.Write(data); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("write checkpoint %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("sync checkpoint %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close checkpoint %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), s.Path()); err != nil {
		return fmt.Errorf("replace checkpoint %s: %w", s.Path(), err)
	}
	// The rename is only durable once the directory entry is.
	return syncDir(s.dir)
}

// LockFileName is the lock file in the state directory.
const LockFileName = "lock"

// lockPoll is how often a waiting Lock tries the lock again. flock(2) has no
// timeout, and a blocking flock cannot be interrupted by a context, so a
// wait that must end with its context polls a non-blocking one.
const lockPoll = 5 * time.Millisecond

// ErrLockTimeout is wrapped by Lock's error when the context ended before
// the lock was free: another holder (a hung NVML or MPS call, or the other
// plugin instance of a rolling update) kept it.
var ErrLockTimeout = errors.New("state directory lock still held by another operation")

// Lock takes an exclusive lock on the state directory, waiting for it until
// ctx ends, and returns the function that releases it. Plugin instances on
// one node (an old and a new one during a rolling update) hold it around
// every change to the checkpoint and the devices it records, so that
// neither writes from a stale copy. Within one process, each Lock opens the
// file anew, so two callers exclude each other as two processes do.
func (s *Store) Lock(ctx context.Context) (func(), error) {
	return s.lock(ctx, syscall.LOCK_EX)
}

// RLock takes the state directory's lock shared, as Lock does: readers that
// must not see the checkpoint change until they are done with what they read
// (a publication computed from it, until the API server holds it) exclude
// every Lock, not each other.
func (s *Store) RLock(ctx context.Context) (func(), error) {
	return s.lock(ctx, syscall.LOCK_SH)
}

func (s *Store) lock(ctx context.Context, how int) (func(), error) {
	f, err := os.OpenFile(filepath.Join(s.dir, LockFileName), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open state lock: %w", err)
	}
	ticker := time.NewTicker(lockPoll)
	defer ticker.Stop()
	for {
		err = syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			break
		}
		select {
		case <-ctx.Done():
			_ = f.Close()
			return nil, fmt.Errorf("lock state directory %s: %w: %w", s.dir, ErrLockTimeout, context.Cause(ctx))
		case <-ticker.C:
		}
	}
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("lock state directory %s: %w", s.dir, err)
	}
	// Closing the file releases the lock.
	return func() { _ = f.Close() }, nil
}
