package recordfile

import (
	"bufio"
	"encoding/json"
	"errors"
	"os"
)

// Lines is a file sink's content.
type Lines struct {
	IDs  []string // record ids, in file order, repeats kept
	Torn int      // lines that are no record (a JSON object with a 64-hex-digit id)
}

// Read reads the file sink at path; a file that does not exist is empty.
func Read(path string) (Lines, error) {
	var l Lines
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return l, nil
	}
	if err != nil {
		return l, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var r struct {
			ID string `json:"id"`
		}
		if json.Unmarshal(sc.Bytes(), &r) != nil || len(r.ID) != 64 {
			l.Torn++
			continue
		}
		l.IDs = append(l.IDs, r.ID)
	}
	return l, sc.Err()
}
