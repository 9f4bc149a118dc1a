package main

import "errors"

// errNotImplemented marks commands still being written. Delete this file
// once files.go, blender.go and ffmpeg.go no longer use it.
var errNotImplemented = errors.New("this command is not implemented yet")
