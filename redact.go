package main

import (
	"strings"
	"unicode/utf8"
)

// redactedPassword replaces the password of a URL's userinfo in output.
const redactedPassword = "xxxxx"

// redactURL hides the password in raw's userinfo, as url.URL.Redacted does
// (http://user:xxxxx@host/), but without parsing, so that a URL too broken
// for url.Parse is redacted too.
func redactURL(raw string) string {
	if pw := urlPassword(raw); pw != "" {
		return strings.Replace(raw, ":"+pw+"@", ":"+redactedPassword+"@", 1)
	}
	return raw
}

// redactIn hides the password of rawURL wherever msg quotes it.
func redactIn(msg, rawURL string) string {
	if pw := urlPassword(rawURL); pw != "" {
		return strings.ReplaceAll(msg, pw, redactedPassword)
	}
	return msg
}

// urlPassword is the password in raw's userinfo, as written, or "".
func urlPassword(raw string) string {
	_, rest, _ := strings.Cut(raw, "://")
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

// cutAt is the longest prefix of s, valid UTF-8, of at most n bytes that
// does not split a character: long values are cut short in logs and updates.
func cutAt(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// truncate is s cut to about n bytes, with "…" where it was cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return cutAt(s, n) + "…"
}
