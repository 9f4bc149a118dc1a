package main

import "strings"

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
