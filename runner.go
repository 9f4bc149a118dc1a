package main

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// task is what the worker uses of the Manager's Task document (§2.1).
type task struct {
	ID       string
	Commands []taskCommand
}

// taskCommand is one command of a task. Settings is nil when the Manager
// sent something other than a JSON object; RawSettings then says what.
type taskCommand struct {
	Name        string
	Settings    settings
	RawSettings string
}

// decodeTask parses a /task response body. Settings are decoded with
// json.Number so that integer and float settings stay apart.
func decodeTask(body []byte) (*task, error) {
	var doc struct {
		ID       string `json:"_id"`
		Commands []struct {
			Name     string          `json:"name"`
			Settings json.RawMessage `json:"settings"`
		} `json:"commands"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("decoding task: %w", err)
	}
	if doc.ID == "" {
		return nil, fmt.Errorf("decoding task: no _id")
	}
	t := &task{ID: doc.ID}
	for _, c := range doc.Commands {
		tc := taskCommand{Name: c.Name, RawSettings: string(c.Settings)}
		if tc.RawSettings == "" {
			tc.RawSettings = "(none)"
		}
		dec := json.NewDecoder(bytes.NewReader(c.Settings))
		dec.UseNumber()
		var s map[string]any
		if err := dec.Decode(&s); err == nil && s != nil {
			tc.Settings = s
		}
		t.Commands = append(t.Commands, tc)
	}
	return t, nil
}
