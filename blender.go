package main

import "context"

func cmdBlenderRender(ctx context.Context, c *cmdCtx, s settings) (func(context.Context) error, error) {
	return nil, errNotImplemented
}

func cmdBlenderRenderProgressive(ctx context.Context, c *cmdCtx, s settings) (func(context.Context) error, error) {
	return nil, errNotImplemented
}

func cmdBlenderRenderAudio(ctx context.Context, c *cmdCtx, s settings) (func(context.Context) error, error) {
	return nil, errNotImplemented
}

func cmdExrSequenceToJPEG(ctx context.Context, c *cmdCtx, s settings) (func(context.Context) error, error) {
	return nil, errNotImplemented
}
