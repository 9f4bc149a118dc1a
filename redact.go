package main

import (
	"strings"
)

// redactURL hides the password in raw's userinfo, as url.URL.Redacted does
// (http://user:xxxxx@host/), but without parsing, so that a URL too broken
// for url.Parse is redacted too.
func redactURL(raw string) string {
	if pw := urlPassword(raw); pw != "" {
		return strings.Replace(raw, ":"+pw+"@", ":"+redactedPassword+"@", 1)
	}
	return raw
}

// redactIn hides the password of rawURL wherever it occurs in msg, such as
// an error that quotes the URL.
func redactIn(msg, rawURL string) string {
	if pw := urlPassword(rawURL); pw != "" {
		return strings.ReplaceAll(msg, pw, redactedPassword)
	}
	return msg
}

// redactedPassword replaces the password of a URL's userinfo in output.
const redactedPassword = "xxxxx"

// urlPassword is the password in raw's userinfo, as written, or "".
func urlPassword(raw string) string {
	_, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return ""
	}
	if end := strings.IndexAny(rest, "/?#"); end >= 0 {
		rest = rest[:end]
	}
	at := strings.LastIndexByte(rest, '@')
	if at < 0 {
		return ""
	}
	_, pw, _ := strings.Cut(rest[:at], ":")
	return pw
}
