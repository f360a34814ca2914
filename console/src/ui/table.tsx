// Every list the console shows is one of these: a table in a box that scrolls sideways on a narrow
// screen. The box is a named region a keyboard can focus, so what scrolls can be reached without a
// mouse (axe-core's scrollable-region-focusable); the caption names the table to a screen reader.
import type { ComponentChildren } from "preact";

/** A column's heading; `hidden` headings (an actions column) are read, not shown. */
export type Column = string | { label: string; hidden: true };

export function DataTable({
  label,
  caption,
  columns,
  testid,
  children,
}: {
  label: string;
  caption?: string;
  columns: readonly Column[];
  testid?: string;
  children: ComponentChildren;
}) {
  return (
    <div class="table-wrap" role="region" tabIndex={0} aria-label={label}>
      <table data-testid={testid}>
        {caption && <caption class="sr-only">{caption}</caption>}
        <thead>
          <tr>
            {columns.map((column) =>
              typeof column === "string" ? (
                <th scope="col" key={column}>
                  {column}
                </th>
              ) : (
                <th scope="col" key={column.label}>
                  <span class="sr-only">{column.label}</span>
                </th>
              ),
            )}
          </tr>
        </thead>
        <tbody>{children}</tbody>
      </table>
    </div>
  );
}
