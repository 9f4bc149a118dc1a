package main

// Temporary stand-ins until config.go's parser lands (branch config).

import (
	"bufio"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

func loadConfig(cfgFile, homeDir string, warn func(string)) (*Config, error) {
	c := defaultConfig()
	c.HomeConfig = filepath.Join(homeDir, ".flamenco-worker.cfg")
	if cfgFile == "" {
		cfgFile = "flamenco-worker.cfg"
	}
	for _, p := range []string{cfgFile, c.HomeConfig} {
		f, err := os.Open(p)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			k, v, ok := strings.Cut(sc.Text(), "=")
			if !ok {
				continue
			}
			k, v = strings.TrimSpace(k), strings.TrimSpace(v)
			secs, _ := strconv.ParseFloat(v, 64)
			d := time.Duration(secs * float64(time.Second))
			switch k {
			case "manager_url":
				c.ManagerURL = v
			case "worker_registration_secret":
				c.WorkerRegistrationSecret = v
			case "worker_id":
				c.WorkerID = v
			case "worker_secret":
				c.WorkerSecret = v
			case "task_types":
				c.TaskTypes = strings.Fields(v)
			case "may_i_run_interval_seconds":
				c.MayIRunInterval = d
			case "push_act_max_interval_seconds":
				c.PushActMaxInterval = d
			case "push_log_max_interval_seconds":
				c.PushLogMaxInterval = d
			case "push_log_max_entries":
				c.PushLogMaxEntries, _ = strconv.Atoi(v)
			}
		}
		f.Close()
	}
	return &c, nil
}

func (c *Config) writeEffective(w io.Writer) {}

func writeCredentials(homeFile, workerID, secret string) error {
	return os.WriteFile(homeFile, []byte("[flamenco-worker]\nworker_id = "+workerID+"\nworker_secret = "+secret+"\n"), 0o600)
}
