package main

import "context"

func cmdMergeProgressiveRenders(ctx context.Context, c *cmdCtx, s settings) (func(context.Context) error, error) {
	return nil, errNotImplemented
}

func cmdMergeProgressiveRenderSequence(ctx context.Context, c *cmdCtx, s settings) (func(context.Context) error, error) {
	return nil, errNotImplemented
}
