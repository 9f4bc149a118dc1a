// Command shape reports the measures of issue 13 for the package in the
// current directory: non-test Go lines (and how many of them hold code),
// the functions longer than a limit, and the pairs of files that use each
// other both ways.
//
//	go run ./tools/shape [-max 60]
//
// It exits 1 when a function is too long or a pair of files depends on each
// other both ways. Imports are type-checked from source (go/importer "source"),
// so it runs with the standard library alone.
package main

import (
	"flag"
	"fmt"
	"go/ast"
	"go/importer"
	"go/parser"
	"go/scanner"
	"go/token"
	"go/types"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

func main() {
	maxLines := flag.Int("max", 60, "longest function allowed, in lines")
	verbose := flag.Bool("v", false, "name what each file of a both-way pair uses of the other")
	flag.Parse()
	fset := token.NewFileSet()
	names, _ := filepath.Glob("*.go")
	var files []*ast.File
	lines, code := 0, 0
	for _, name := range names {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.ParseComments)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		files = append(files, f)
		lines += fset.File(f.Pos()).LineCount()
		code += codeLines(name)
	}
	info := &types.Info{Uses: map[*ast.Ident]types.Object{}, Selections: map[*ast.SelectorExpr]*types.Selection{}}
	conf := types.Config{Importer: importer.ForCompiler(fset, "source", nil), Error: func(error) {}}
	pkg, _ := conf.Check("main", fset, files, info)

	bad := false
	fmt.Printf("non-test lines: %d in %d files (%d of them hold code: not blank, not only a comment)\n", lines, len(files), code)
	type fn struct {
		name string
		n    int
	}
	var long []fn
	longest := fn{}
	for _, f := range files {
		for _, d := range f.Decls {
			fd, ok := d.(*ast.FuncDecl)
			if !ok || fd.Body == nil {
				continue
			}
			n := fset.Position(fd.End()).Line - fset.Position(fd.Pos()).Line + 1
			name := fset.Position(fd.Pos()).Filename + ":" + fd.Name.Name
			if n > longest.n {
				longest = fn{name, n}
			}
			if n > *maxLines {
				long = append(long, fn{name, n})
			}
		}
	}
	fmt.Printf("longest function: %s, %d lines\n", longest.name, longest.n)
	for _, l := range long {
		fmt.Printf("  over %d: %s (%d)\n", *maxLines, l.name, l.n)
		bad = true
	}

	// uses[a][b]: file a uses something declared at package level (or a
	// method or field of a package-level type) in file b.
	uses := map[string]map[string]bool{}
	what := map[[2]string]map[string]bool{}
	note := func(from token.Pos, obj types.Object) {
		if obj == nil || obj.Pkg() != pkg || !obj.Pos().IsValid() {
			return
		}
		if v, ok := obj.(*types.Var); ok && !v.IsField() && obj.Parent() != pkg.Scope() {
			return // a local variable
		}
		if _, ok := obj.(*types.Func); !ok {
			if obj.Parent() != nil && obj.Parent() != pkg.Scope() {
				return // local const, type or label
			}
		}
		a, b := fset.Position(from).Filename, fset.Position(obj.Pos()).Filename
		if a == b {
			return
		}
		if uses[a] == nil {
			uses[a] = map[string]bool{}
		}
		uses[a][b] = true
		k := [2]string{a, b}
		if what[k] == nil {
			what[k] = map[string]bool{}
		}
		what[k][obj.Name()] = true
	}
	for id, obj := range info.Uses {
		note(id.Pos(), obj)
	}
	for sel, s := range info.Selections {
		note(sel.Sel.Pos(), s.Obj())
	}
	var pairs []string
	for a, bs := range uses {
		for b := range bs {
			if a < b && uses[b][a] {
				pairs = append(pairs, a+" <-> "+b)
			}
		}
	}
	sort.Strings(pairs)
	fmt.Printf("both-way file pairs: %d\n", len(pairs))
	for _, p := range pairs {
		fmt.Println("  " + p)
		bad = true
		if *verbose {
			ab := strings.Split(p, " <-> ")
			fmt.Printf("    %s uses %s\n", ab[0], keys(what[[2]string{ab[0], ab[1]}]))
			fmt.Printf("    %s uses %s\n", ab[1], keys(what[[2]string{ab[1], ab[0]}]))
		}
	}
	cycles := sccs(uses)
	fmt.Printf("file cycles: %d\n", len(cycles))
	for _, c := range cycles {
		fmt.Println("  " + strings.Join(c, ", "))
		for _, a := range c {
			for _, b := range c {
				if *verbose && uses[a][b] {
					fmt.Printf("    %s uses %s: %s\n", a, b, keys(what[[2]string{a, b}]))
				}
			}
		}
		bad = true
	}
	if bad {
		os.Exit(1)
	}
}

// sccs are the groups of two or more files that reach each other through
// their uses (Tarjan's algorithm), each sorted.
func sccs(g map[string]map[string]bool) [][]string {
	var nodes []string
	for n := range g {
		nodes = append(nodes, n)
	}
	sort.Strings(nodes)
	index, low, on := map[string]int{}, map[string]int{}, map[string]bool{}
	var stack []string
	var out [][]string
	var visit func(string)
	visit = func(v string) {
		index[v], low[v] = len(index), len(index)
		stack, on[v] = append(stack, v), true
		var next []string
		for w := range g[v] {
			next = append(next, w)
		}
		sort.Strings(next)
		for _, w := range next {
			if _, seen := index[w]; !seen {
				visit(w)
				low[v] = min(low[v], low[w])
			} else if on[w] {
				low[v] = min(low[v], index[w])
			}
		}
		if low[v] == index[v] {
			var c []string
			for {
				w := stack[len(stack)-1]
				stack, on[w] = stack[:len(stack)-1], false
				c = append(c, w)
				if w == v {
					break
				}
			}
			if len(c) > 1 {
				sort.Strings(c)
				out = append(out, c)
			}
		}
	}
	for _, n := range nodes {
		if _, seen := index[n]; !seen {
			visit(n)
		}
	}
	return out
}

func keys(m map[string]bool) string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return strings.Join(ks, " ")
}

// codeLines counts the lines of a file on which a token (not a comment)
// starts.
func codeLines(name string) int {
	src, _ := os.ReadFile(name)
	fset := token.NewFileSet()
	var s scanner.Scanner
	s.Init(fset.AddFile(name, -1, len(src)), src, nil, 0)
	seen := map[int]bool{}
	for {
		pos, tok, lit := s.Scan()
		if tok == token.EOF {
			return len(seen)
		}
		if tok == token.SEMICOLON && lit == "\n" {
			continue // an automatic semicolon, not a token of the source
		}
		seen[fset.Position(pos).Line] = true
	}
}
