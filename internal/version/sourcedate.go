package version

import (
	"fmt"
	"os"
	"strconv"
	"time"
)

// SourceDate is $SOURCE_DATE_EPOCH (reproducible builds: the date a
// generated document carries), or now when it is unset.
func SourceDate() (time.Time, error) {
	v := os.Getenv("SOURCE_DATE_EPOCH")
	if v == "" {
		return time.Now().UTC(), nil
	}
	secs, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH %.20q: %w", v, err)
	}
	return time.Unix(secs, 0).UTC(), nil
}
