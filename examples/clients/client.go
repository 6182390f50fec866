package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
)

func main() {
	guard, err := net.Dial("unix", os.Getenv("AGENT_GUARD_SOCKET"))
	if err != nil {
		panic(err)
	}
	fmt.Fprintln(guard, `{"op":"subscribe"}`)
	for lines := bufio.NewScanner(guard); lines.Scan(); {
		var msg struct {
			Event, Reason string
			DeadlineInMs  int64 `json:"deadline_in_ms"`
		}
		if json.Unmarshal(lines.Bytes(), &msg) == nil && msg.Event == "drain" {
			fmt.Printf("draining (%s), %d ms left\n", msg.Reason, msg.DeadlineInMs)
			// ... stop taking new work, finish what is in flight ...
			fmt.Fprintln(guard, `{"op":"drained"}`)
		}
	}
}
