package output

import (
	"regexp"
	"strings"
	"unicode/utf8"
)

// columnGap separates table columns, as in kubectl.
const columnGap = "   "

// ansiSeq matches the CSI sequences Colorize writes, which take no room.
var ansiSeq = regexp.MustCompile("\x1b\\[[0-9;]*[A-Za-z]")

// width is how many columns s takes on a terminal, not counting colour
// sequences (wide East Asian characters count as one).
func width(s string) int { return utf8.RuneCountInString(ansiSeq.ReplaceAllString(s, "")) }

// cellReplacer keeps a cell on its line and in its column.
var cellReplacer = strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ", "\t", " ")

// Table writes header (unless nil) and rows as left-aligned columns
// separated by three spaces, with no trailing spaces. Line breaks and tabs in cells become
// spaces. Cells may hold colours from Colorize: the columns are measured
// here rather than by text/tabwriter, which counts the bytes of colour
// sequences as width and would misalign a coloured column. In wide format
// the caller passes its extra columns.
func (p *Printer) Table(header []string, rows [][]string) error {
	all := make([][]string, 0, len(rows)+1)
	if header != nil {
		all = append(all, header)
	}
	all = append(all, rows...)
	// Widths carry over from earlier calls, so rows printed later (a
	// --watch) line up under the first table.
	widths := p.widths
	for i, row := range all {
		clean := make([]string, len(row))
		for j, cell := range row {
			clean[j] = cellReplacer.Replace(cell)
			if j >= len(widths) {
				widths = append(widths, 0)
			}
			widths[j] = max(widths[j], width(clean[j]))
		}
		all[i] = clean
	}
	p.widths = widths
	var b strings.Builder
	for _, row := range all {
		var line strings.Builder
		for j, cell := range row {
			if j > 0 {
				line.WriteString(columnGap)
			}
			line.WriteString(cell)
			if j < len(row)-1 {
				line.WriteString(strings.Repeat(" ", widths[j]-width(cell)))
			}
		}
		b.WriteString(strings.TrimRight(line.String(), " "))
		b.WriteByte('\n')
	}
	_, err := p.Out.Write([]byte(b.String()))
	return err
}
