package main

import "context"

func cmdMoveOutOfWay(ctx context.Context, c *cmdCtx, s settings) (func(context.Context) error, error) {
	return nil, errNotImplemented
}

func cmdMoveToFinal(ctx context.Context, c *cmdCtx, s settings) (func(context.Context) error, error) {
	return nil, errNotImplemented
}

func cmdCopyFile(ctx context.Context, c *cmdCtx, s settings) (func(context.Context) error, error) {
	return nil, errNotImplemented
}

func cmdRemoveTree(ctx context.Context, c *cmdCtx, s settings) (func(context.Context) error, error) {
	return nil, errNotImplemented
}

func cmdRemoveFile(ctx context.Context, c *cmdCtx, s settings) (func(context.Context) error, error) {
	return nil, errNotImplemented
}

func cmdMoveWithCounter(ctx context.Context, c *cmdCtx, s settings) (func(context.Context) error, error) {
	return nil, errNotImplemented
}

func cmdCreatePythonFile(ctx context.Context, c *cmdCtx, s settings) (func(context.Context) error, error) {
	return nil, errNotImplemented
}
