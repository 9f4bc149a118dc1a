package main

// Temporary stand-ins until config.go's parser lands (branch config).

import (
	"io"
	"os"
	"path/filepath"
)

func loadConfig(cfgFile, homeDir string, warn func(string)) (*Config, error) {
	c := defaultConfig()
	c.HomeConfig = filepath.Join(homeDir, ".flamenco-worker.cfg")
	return &c, nil
}

func (c *Config) writeEffective(w io.Writer) {}

func writeCredentials(homeFile, workerID, secret string) error {
	return os.WriteFile(homeFile, []byte("[flamenco-worker]\nworker_id = "+workerID+"\nworker_secret = "+secret+"\n"), 0o600)
}
