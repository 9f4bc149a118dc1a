package main

import (
	"strings"
	"testing"
)

func TestExecCommand(t *testing.T) {
	res := runTestCommand(t, "exec", `{"cmd": "sh -c 'echo hello, this is two lines; echo Yes, really.'"}`, testEnv())
	if !res.ok {
		t.Fatalf("exec failed: %s", res.logText())
	}
	want := []string{"exec: Starting", "exec: Executing sh -c 'echo hello, this is two lines; echo Yes, really.'"}
	for i, w := range want {
		if res.logs[i] != w {
			t.Errorf("log[%d] = %q, want %q", i, res.logs[i], w)
		}
	}
	if !strings.HasSuffix(res.logs[2], " > hello, this is two lines") || !strings.HasPrefix(res.logs[2], "pid=") {
		t.Errorf("log[2] = %q, want pid=N > hello...", res.logs[2])
	}
	if got := res.logs[len(res.logs)-1]; got != "exec: Finished" {
		t.Errorf("last log = %q", got)
	}
}
