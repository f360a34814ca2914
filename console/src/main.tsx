import { render } from "preact";

import { App } from "./app";
import { session } from "./auth/session";
import "./styles.css";

const root = document.getElementById("app");
if (root) render(<App />, root);
void session.start();
