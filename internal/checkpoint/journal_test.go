package checkpoint

import (
	"errors"
	"fmt"
	"os"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// history applies n changes in turn (claims added, changed and deleted)
// and returns the checkpoint after each.
func history(n int) []*Checkpoint {
	base := sample().Claims["uid-1"]
	cp := New()
	var out []*Checkpoint
	for i := range n {
		uid := fmt.Sprintf("c%d", i%4)
		if i%5 == 4 {
			delete(cp.Claims, uid)
		} else {
			c := base.DeepCopy()
			c.UID, c.Name = uid, fmt.Sprintf("step-%d", i)
			cp.Claims[uid] = c
		}
		out = append(out, cp.DeepCopy())
	}
	return out
}

func load(t *testing.T, dir string) *Checkpoint {
	t.Helper()
	s, err := NewStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	cp, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	return cp
}

// TestJournalReplaysAndCompacts: after every Save a new store reads the
// same claims, across compactions, which leave the journal empty.
func TestJournalReplaysAndCompacts(t *testing.T) {
	dir := t.TempDir()
	s, err := NewStore(dir, WithCompactEvery(3))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(); err != nil {
		t.Fatal(err)
	}
	for i, want := range history(20) {
		if err := s.Save(want); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, load(t, dir)); diff != "" {
			t.Fatalf("after save %d (-want +got):\n%s", i, diff)
		}
		if fi, err := os.Stat(s.journalPath()); err == nil && (i+1)%3 == 0 && fi.Size() != 0 {
			t.Errorf("after save %d (a compaction) the journal holds %d bytes", i, fi.Size())
		}
	}
}

// TestJournalLostEmptyingChangesNothing: a crash that lost the emptying
// of the journal after a compaction replays records the file already
// holds; the claims are the same.
func TestJournalLostEmptyingChangesNothing(t *testing.T) {
	dir := t.TempDir()
	s, _ := NewStore(dir, WithCompactEvery(4))
	if _, err := s.Load(); err != nil {
		t.Fatal(err)
	}
	h := history(4)
	for _, cp := range h[:3] {
		if err := s.Save(cp); err != nil {
			t.Fatal(err)
		}
	}
	journal, err := os.ReadFile(s.journalPath())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Save(h[3]); err != nil { // appends, compacts, empties
		t.Fatal(err)
	}
	// What the journal held just before it was emptied: the first three
	// records and the fourth.
	last, _ := os.ReadFile(s.journalPath())
	if len(last) != 0 {
		t.Fatalf("journal not emptied by the compaction: %d bytes", len(last))
	}
	rec4 := diff(h[2], h[3])
	s2, _ := NewStore(t.TempDir())
	s2.last = New()
	if err := s2.appendRecord(rec4); err != nil {
		t.Fatal(err)
	}
	line4, _ := os.ReadFile(s2.journalPath())
	if err := os.WriteFile(s.journalPath(), append(journal, line4...), 0o600); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(h[3], load(t, dir)); diff != "" {
		t.Errorf("replaying the compacted records over the file (-want +got):\n%s", diff)
	}
}

// TestJournalTornTail: a record cut short by a crash was never
// acknowledged; it is ignored and cut off before the next append. A bad
// record before the last is corruption, never a silent loss of claims.
func TestJournalTornTail(t *testing.T) {
	dir := t.TempDir()
	s, _ := NewStore(dir)
	if _, err := s.Load(); err != nil {
		t.Fatal(err)
	}
	h := history(3)
	for _, cp := range h[:2] {
		if err := s.Save(cp); err != nil {
			t.Fatal(err)
		}
	}
	good, _ := os.ReadFile(s.journalPath())
	torn := append(append([]byte{}, good...), []byte(`{"checksum":123,"record":{"put":`)...)
	if err := os.WriteFile(s.journalPath(), torn, 0o600); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(h[1], load(t, dir)); diff != "" {
		t.Fatalf("with a torn tail (-want +got):\n%s", diff)
	}
	s2, _ := NewStore(dir)
	if _, err := s2.Load(); err != nil {
		t.Fatal(err)
	}
	if err := s2.Save(h[2]); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(h[2], load(t, dir)); diff != "" {
		t.Fatalf("after appending past a torn tail (-want +got):\n%s", diff)
	}

	bad := append([]byte(`{"checksum":1,"record":{}}`+"\n"), good...)
	if err := os.WriteFile(s.journalPath(), bad, 0o600); err != nil {
		t.Fatal(err)
	}
	s3, _ := NewStore(dir)
	if _, err := s3.Load(); !errors.Is(err, ErrCorrupt) {
		t.Errorf("a bad record before the last: %v, want ErrCorrupt", err)
	}
}
