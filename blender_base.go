package main

import (
	"fmt"
	"os"
)

// blenderCmd validates the "blender_cmd" setting: it is split shell-style
// and its first word must exist as a path (no $PATH lookup, as in the
// Python worker; the Manager fills in {blender} with a full path).
func blenderCmd(r *settingsReader) []string {
	argv := r.commandLine("blender_cmd", true, "")
	r.then(func() error {
		if _, err := os.Stat(argv[0]); err != nil {
			return fmt.Errorf("blender_cmd %q does not exist", argv[0])
		}
		return nil
	})
	return argv
}
