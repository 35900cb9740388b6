package checkpoint

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
)

// JournalName is the journal's name inside the state directory. Each Save
// appends one synced record of the claims it changed to the journal, one
// fsync instead of a rewritten, synced and renamed checkpoint with its
// directory synced; every compactEvery records the whole checkpoint is
// written atomically and the journal emptied.
const JournalName = "checkpoint.journal"

// defaultCompactEvery is how many records the journal holds at most.
const defaultCompactEvery = 64

// record is one Save: the claims it wrote and the UIDs it deleted. A
// record replaces whole claims, so replaying the journal over a
// checkpoint that already holds some of it (a crash between compaction
// and emptying the journal) gives the same claims.
type record struct {
	Put    map[string]*Claim `json:"put,omitempty"`
	Delete []string          `json:"delete,omitempty"`
}

// line is a record on disk, with a checksum over its encoding.
type line struct {
	Checksum uint32          `json:"checksum"`
	Record   json.RawMessage `json:"record"`
}

func (s *Store) journalPath() string { return filepath.Join(s.dir, JournalName) }

// WithCompactEvery sets how many journal records trigger a compaction.
func WithCompactEvery(n int) StoreOption { return func(s *Store) { s.compactEvery = n } }

// replay applies the journal to cp and returns the length of its intact
// part. A torn last line (a crash while appending, never acknowledged) is
// ignored; a bad line before the last is corruption.
func replay(path string, cp *Checkpoint) (int64, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read checkpoint journal %s: %w", path, err)
	}
	var good int64
	r := bufio.NewReader(bytes.NewReader(data))
	for n := 1; ; n++ {
		raw, err := r.ReadBytes('\n')
		if errors.Is(err, io.EOF) && len(raw) == 0 {
			return good, nil
		}
		rec, perr := parseLine(raw)
		if perr != nil || errors.Is(err, io.EOF) {
			if good+int64(len(raw)) == int64(len(data)) {
				return good, nil // torn tail
			}
			return 0, fmt.Errorf("%w: journal %s line %d: %w", ErrCorrupt, path, n, perr)
		}
		for uid, c := range rec.Put {
			if c == nil || c.UID != uid {
				return 0, fmt.Errorf("%w: journal %s line %d: claim entry %q does not carry its own UID", ErrCorrupt, path, n, uid)
			}
			cp.Claims[uid] = c
		}
		for _, uid := range rec.Delete {
			delete(cp.Claims, uid)
		}
		good += int64(len(raw))
	}
}

func parseLine(raw []byte) (*record, error) {
	var l line
	if err := json.Unmarshal(raw, &l); err != nil {
		return nil, err
	}
	if sum := crc32.ChecksumIEEE(l.Record); sum != l.Checksum {
		return nil, fmt.Errorf("checksum %08x, want %08x", sum, l.Checksum)
	}
	var rec record
	dec := json.NewDecoder(bytes.NewReader(l.Record))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rec); err != nil {
		return nil, err
	}
	return &rec, nil
}

// diff is the record that turns from into to; nil when they are equal.
func diff(from, to *Checkpoint) *record {
	rec := &record{}
	for uid, c := range to.Claims {
		if old, ok := from.Claims[uid]; !ok || !reflect.DeepEqual(old, c) {
			if rec.Put == nil {
				rec.Put = map[string]*Claim{}
			}
			rec.Put[uid] = c
		}
	}
	for uid := range from.Claims {
		if _, ok := to.Claims[uid]; !ok {
			rec.Delete = append(rec.Delete, uid)
		}
	}
	if rec.Put == nil && rec.Delete == nil {
		return nil
	}
	return rec
}

// appendRecord appends one record and syncs the journal.
func (s *Store) appendRecord(rec *record) error {
	body, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode checkpoint record: %w", err)
	}
	data, err := json.Marshal(line{Checksum: crc32.ChecksumIEEE(body), Record: body})
	if err != nil {
		return fmt.Errorf("encode checkpoint record: %w", err)
	}
	if s.journal == nil {
		if err := s.openJournal(); err != nil {
			return err
		}
	}
	data = append(data, '\n')
	if _, err := s.journal.Write(data); err != nil {
		s.closeJournal()
		return fmt.Errorf("append to checkpoint journal %s: %w", s.journalPath(), err)
	}
	if err := s.journal.Sync(); err != nil {
		s.closeJournal()
		return fmt.Errorf("sync checkpoint journal %s: %w", s.journalPath(), err)
	}
	s.journalGood += int64(len(data))
	s.records++
	return nil
}

// openJournal opens the journal for appending, cutting a torn tail off
// and making a new journal's directory entry durable.
func (s *Store) openJournal() error {
	_, statErr := os.Stat(s.journalPath())
	f, err := os.OpenFile(s.journalPath(), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("open checkpoint journal: %w", err)
	}
	if err := f.Truncate(s.journalGood); err != nil {
		_ = f.Close()
		return fmt.Errorf("cut torn tail of checkpoint journal %s: %w", s.journalPath(), err)
	}
	if _, err := f.Seek(s.journalGood, io.SeekStart); err != nil {
		_ = f.Close()
		return fmt.Errorf("seek checkpoint journal %s: %w", s.journalPath(), err)
	}
	if errors.Is(statErr, fs.ErrNotExist) {
		if err := syncDir(s.dir); err != nil {
			_ = f.Close()
			return err
		}
	}
	s.journal = f
	return nil
}

// closeJournal forgets the open journal after a failed write, so that the
// next write reopens it at its intact length.
func (s *Store) closeJournal() {
	if s.journal != nil {
		_ = s.journal.Close()
		s.journal = nil
	}
	s.last = nil // the next Save writes the whole checkpoint
}

// emptyJournal empties the journal after a compaction made its records
// part of the checkpoint.
func (s *Store) emptyJournal() error {
	s.journalGood, s.records = 0, 0
	if err := s.journal.Truncate(0); err != nil {
		s.closeJournal()
		return fmt.Errorf("empty checkpoint journal %s: %w", s.journalPath(), err)
	}
	if _, err := s.journal.Seek(0, io.SeekStart); err != nil {
		s.closeJournal()
		return fmt.Errorf("empty checkpoint journal %s: %w", s.journalPath(), err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync checkpoint directory %s: %w", dir, err)
	}
	defer func() { _ = d.Close() }()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync checkpoint directory %s: %w", dir, err)
	}
	return nil
}
