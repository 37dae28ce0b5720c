"""Tools the environments expose to the agent."""
from appo_envs.tools.base import Tool, ToolOutput, tool_schema, validate_arguments
from appo_envs.tools.python_tool import PythonTool

__all__ = ["PythonTool", "Tool", "ToolOutput", "tool_schema", "validate_arguments"]
