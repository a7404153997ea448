package node

import (
	"embed"
	"io/fs"
)

//go:embed ui
var uiFiles embed.FS

func uiFS() fs.FS {
	sub, err := fs.Sub(uiFiles, "ui")
	if err != nil {
		return uiFiles
	}
	return sub
}
