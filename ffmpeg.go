package main

import "context"

func cmdCreateVideo(ctx context.Context, c *cmdCtx, s settings) (func(context.Context) error, error) {
	return nil, errNotImplemented
}

func cmdConcatenateVideos(ctx context.Context, c *cmdCtx, s settings) (func(context.Context) error, error) {
	return nil, errNotImplemented
}

func cmdMuxAudio(ctx context.Context, c *cmdCtx, s settings) (func(context.Context) error, error) {
	return nil, errNotImplemented
}

func cmdEncodeAudio(ctx context.Context, c *cmdCtx, s settings) (func(context.Context) error, error) {
	return nil, errNotImplemented
}
